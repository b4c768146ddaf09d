"""``factored``: the paper's form, "2D convolution + channel fusion" (docs/lowering.md,
"factored: the paper's form"; its counts in docs/algorithm.md, section 7).

For each level of clustered channels, one grouped Conv convolves each of its kept channels with that
channel's q kernels (``group = C_g``, ``C_g * q`` outputs), the levels' responses are
concatenated into ``Q = sum q_c`` maps, and one 1x1 Conv with a 0/1 weight of shape
(N, Q) adds, for every output filter n, the response of the kernel it uses on each
channel: ``y_n = sum_c R[c, labels[n, c]] + b_n``.

Fusion form, chosen per layer by N from the single-layer timings of docs/lowering.md
("onnxruntime latency findings", onnxruntime CPU): a
1x1 Conv with a 0/1 (N, Q) weight below 128 filters (1.6-3.5x the dense time at 16-64
channels, against 1.9-5.9x for the alternative), Gather + ReduceSum from 128 (6.3-6.7x
at 256-512 channels, against 8.9-13.7x): the 1x1 GEMM grows with N*Q, the gather-sum
only with N*C' but is memory-bound. Whole channels (q = N) go through one ordinary Conv
whose result is added; producers are not pruned under this form (their output is no
longer one Conv). This form costs more time than ``dense`` on onnxruntime CPU; it is
for runtimes with fast grouped convolutions, and shows the paper's count is real.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.plan import LayerPlan
from ..graph.core import constant_values

# docs/lowering.md, "Single layers": the 1x1 fusion Conv wins up to 64 output filters,
# Gather + ReduceSum from 256.
GATHER_SUM_FROM = 128
_SPATIAL_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "auto_pad")


def rewrite(graph: gs.Graph, node: gs.Node, x, plan: LayerPlan, keep: np.ndarray) -> None:
    """Replace ``node`` (reading ``x`` = channels ``keep``) by the factored form; the
    layer's output tensor is unchanged. Whole channels (q = N) gain nothing from a
    per-kernel response, so they go through one ordinary Conv whose result is added."""
    n = plan.weight_shape[0]
    position = {int(ch): i for i, ch in enumerate(keep)}
    attrs = {k: v for k, v in node.attrs.items() if k in _SPATIAL_ATTRS}
    clustered = (plan.q > 0) & (plan.q < n)
    whole = [int(ch) for ch in np.flatnonzero(plan.q == n)]
    bias = list(node.inputs[2:3])
    output = node.outputs[0]
    parts = []
    if np.any(clustered):
        parts.append(_fused_clustered(graph, node, x, plan, position, attrs, bias))
        bias = []
    if whole:
        picked = _gather(graph, x, [position[ch] for ch in whole], f"{node.name}_kse_whole")
        out = gs.Variable(f"{node.name}_kse_whole_out", dtype=x.dtype)
        weight = np.ascontiguousarray(plan.w_hat[:, whole])
        graph.nodes.append(gs.Node(
            "Conv", f"{node.name}_kse_whole", attrs,
            inputs=[picked, gs.Constant(f"{node.name}_kse_whole_weight", weight), *bias],
            outputs=[out]))
        parts.append(out)
    node.outputs = []
    node.inputs = []
    if len(parts) == 1:
        parts[0].name = output.name
        _replace_tensor(graph, output, parts[0])
    else:
        graph.nodes.append(gs.Node("Add", f"{node.name}_kse_sum", inputs=parts,
                                   outputs=[output]))


def _fused_clustered(graph, node, x, plan, position, attrs, bias):
    """Grouped Conv per level, concatenated responses, 1x1 fusion Conv; its output."""
    n = plan.weight_shape[0]
    dtype = plan.w_hat.dtype
    responses, offsets, start = [], {}, 0
    for level in sorted(set(plan.levels[(plan.q > 0) & (plan.q < n)].tolist())):
        channels = [int(ch) for ch in np.flatnonzero(plan.levels == level)]
        q = int(plan.q[channels[0]])
        tag = f"{node.name}_kse_level{level}"
        picked = _gather(graph, x, [position[ch] for ch in channels], tag)
        weight = np.concatenate([plan.kernels[ch] for ch in channels])[:, None].astype(dtype)
        response = gs.Variable(f"{tag}_out", dtype=x.dtype)
        graph.nodes.append(gs.Node(
            "Conv", tag, {**attrs, "group": len(channels)},
            inputs=[picked, gs.Constant(f"{tag}_kernels", weight)], outputs=[response]))
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
    fused = gs.Variable(f"{node.name}_kse_fused", dtype=x.dtype)
    if n >= GATHER_SUM_FROM:
        _gather_sum(graph, node.name, fused_in, plan, offsets, bias, fused)
        return fused
    select = np.zeros((n, start, 1, 1), dtype=dtype)
    for ch, offset in offsets.items():
        select[np.arange(n), offset + plan.labels[:, ch], 0, 0] = 1
    graph.nodes.append(gs.Node(
        "Conv", f"{node.name}_kse_fusion", {"kernel_shape": [1, 1]},
        inputs=[fused_in, gs.Constant(f"{node.name}_kse_select", select), *bias],
        outputs=[fused]))
    return fused


def _gather_sum(graph, name, responses, plan, offsets, bias, out) -> None:
    """``out[:, n] = sum_c responses[:, offset_c + labels[n, c]] (+ b_n)``: a Gather of
    (N, C') maps and a ReduceSum over C'; N*C' additions, as the paper counts."""
    channels = sorted(offsets)
    index = np.stack([offsets[ch] + plan.labels[:, ch] for ch in channels], axis=1)
    picked = gs.Variable(f"{name}_kse_picked", dtype=responses.dtype)
    graph.nodes.append(gs.Node("Gather", f"{name}_kse_pick", {"axis": 1},
                               inputs=[responses, gs.Constant(f"{name}_kse_index",
                                                              index.astype(np.int64))],
                               outputs=[picked]))
    summed = out if not bias else gs.Variable(f"{name}_kse_summed", dtype=responses.dtype)
    if graph.opset >= 13:  # axes became an input in opset 13
        attrs, inputs = {"keepdims": 0}, [picked, gs.Constant(f"{name}_kse_axes",
                                                               np.array([2], np.int64))]
    else:
        attrs, inputs = {"keepdims": 0, "axes": [2]}, [picked]
    graph.nodes.append(gs.Node("ReduceSum", f"{name}_kse_sum_channels", attrs,
                               inputs=inputs, outputs=[summed]))
    if bias:
        graph.nodes.append(gs.Node("Add", f"{name}_kse_bias",
                                   inputs=[summed, _bias_4d(graph, name, bias[0])],
                                   outputs=[out]))


def _bias_4d(graph, name, bias):
    """The Conv bias (N,) as (1, N, 1, 1), to add to the fused maps: a new constant when
    it is one (initializer or Constant node), else a Reshape of the tensor."""
    values = constant_values(bias)
    if values is not None:
        return gs.Constant(f"{name}_kse_bias4d", values.reshape(1, -1, 1, 1))
    shaped = gs.Variable(f"{name}_kse_bias4d", dtype=bias.dtype)
    graph.nodes.append(gs.Node("Reshape", f"{name}_kse_bias_reshape", inputs=[
        bias, gs.Constant(f"{name}_kse_bias_shape", np.array([1, -1, 1, 1], np.int64))],
        outputs=[shaped]))
    return shaped


def _gather(graph, x, positions, tag):
    picked = gs.Variable(f"{tag}_in", dtype=x.dtype)
    graph.nodes.append(gs.Node("Gather", f"{tag}_gather", {"axis": 1},
                               inputs=[x, gs.Constant(f"{tag}_channels",
                                                      np.array(positions, np.int64))],
                               outputs=[picked]))
    return picked


def _replace_tensor(graph, old, new) -> None:
    """Make every reader of ``old`` (and the graph outputs) read ``new`` instead; ``new``
    takes ``old``'s dtype and shape (a graph output keeps its declared shape)."""
    new.dtype = old.dtype or new.dtype
    new.shape = old.shape
    for consumer in list(old.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[i] = new
    graph.outputs = [new if t is old else t for t in graph.outputs]
