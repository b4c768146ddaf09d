"""``factored``: the paper's form, "2D convolution + channel fusion" (kse-spec.md section 6).

For each level, one grouped Conv convolves each of its kept channels with that
channel's q kernels (``group = C_g``, ``C_g * q`` outputs), the levels' responses are
concatenated into ``Q = sum q_c`` maps, and one 1x1 Conv with a 0/1 weight of shape
(N, Q) adds, for every output filter n, the response of the kernel it uses on each
channel: ``y_n = sum_c R[c, labels[n, c]] + b_n``.

Fusion form: the 1x1 Conv, not Gather + ReduceSum. design.md measured both: the 1x1
Conv is faster at the widths KSE targets (1.6-3.5x the dense time at 16-64 channels vs
1.9-5.9x), slower only from 256 channels, and it keeps the layer's output a plain Conv
so the producer pruning pass can drop its output channels. Either way this form costs
more time than ``dense`` on onnxruntime CPU; it exists for runtimes with fast grouped
convolutions and to show the paper's multiply-add count is real.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.plan import LayerPlan

_SPATIAL_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "auto_pad")


def rewrite(graph: gs.Graph, node: gs.Node, x, plan: LayerPlan, keep: np.ndarray) -> None:
    """Replace ``node`` (reading ``x`` = channels ``keep``) by per-level grouped Convs and
    a 1x1 fusion Conv that keeps ``node``'s name and output."""
    n = plan.weight_shape[0]
    dtype = plan.w_hat.dtype
    position = {int(ch): i for i, ch in enumerate(keep)}
    responses, offsets, start = [], {}, 0
    for level in sorted(set(plan.levels[plan.q > 0].tolist())):
        channels = [int(ch) for ch in np.flatnonzero((plan.levels == level) & (plan.q > 0))]
        q = int(plan.q[channels[0]])
        picked = gs.Variable(f"{node.name}_kse_level{level}_in", dtype=x.dtype)
        graph.nodes.append(gs.Node(
            "Gather", f"{node.name}_kse_level{level}_gather", {"axis": 1},
            inputs=[x, gs.Constant(f"{node.name}_kse_level{level}_channels",
                                   np.array([position[ch] for ch in channels], np.int64))],
            outputs=[picked]))
        weight = np.concatenate([plan.kernels[ch] for ch in channels])[:, None].astype(dtype)
        response = gs.Variable(f"{node.name}_kse_level{level}_out", dtype=x.dtype)
        attrs = {k: v for k, v in node.attrs.items() if k in _SPATIAL_ATTRS}
        graph.nodes.append(gs.Node(
            "Conv", f"{node.name}_kse_level{level}", {**attrs, "group": len(channels)},
            inputs=[picked, gs.Constant(f"{node.name}_kse_level{level}_kernels", weight)],
            outputs=[response]))
        responses.append(response)
        for i, ch in enumerate(channels):
            offsets[ch] = start + i * q
        start += len(channels) * q
    if len(responses) == 1:
        fused_in = responses[0]
    else:
        fused_in = gs.Variable(f"{node.name}_kse_responses", dtype=x.dtype)
        graph.nodes.append(gs.Node("Concat", f"{node.name}_kse_concat", {"axis": 1},
                                   inputs=responses, outputs=[fused_in]))
    select = np.zeros((n, start, 1, 1), dtype=dtype)
    for ch, offset in offsets.items():
        select[np.arange(n), offset + plan.labels[:, ch], 0, 0] = 1
    bias = node.inputs[2:3]
    node.inputs = [fused_in, gs.Constant(f"{node.name}_kse_fusion", select), *bias]
    node.attrs = {"kernel_shape": [1, 1]}
