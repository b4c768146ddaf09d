"""``compact``: store a Conv weight as its distinct kernels plus integer codes.

``W = Gather(codebook, Cast(codes, int64), axis=0)`` with ``codebook`` (M, kh, kw) the
distinct kernels (shared centroids, whole-channel kernels, the zero kernel) and
``codes`` (N, C) in the narrowest unsigned type that indexes M. The Gather and Cast
read only constants, so onnxruntime folds them into the dense weight when the session
is created: the file shrinks, the run does not change (docs/lowering.md, "compact storage").
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.core import constant_values


def codebook(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codebook (M, kh, kw), codes (N, C)) with ``codebook[codes] == weight`` exactly."""
    n, c, kh, kw = weight.shape
    flat = np.ascontiguousarray(weight.reshape(n * c, kh * kw))
    # unique on the raw bytes: -0.0 and 0.0 stay apart, so the expansion is bit-exact
    raw = flat.view(np.dtype((np.void, flat.dtype.itemsize * kh * kw))).ravel()
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    table = flat[first].reshape(-1, kh, kw)
    return table, inverse.reshape(n, c).astype(code_dtype(len(table)))


def code_dtype(entries: int) -> type:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if entries <= np.iinfo(dtype).max + 1:
            return dtype
    return np.int64


def rewrite(graph: gs.Graph, node: gs.Node) -> None:
    """Replace the final Conv weight of ``node`` by the codebook expansion."""
    weight = constant_values(node.inputs[1])
    table, codes = codebook(weight)
    if table.nbytes + codes.nbytes >= weight.nbytes:
        return  # nothing shared: the plain weight is smaller
    cast = gs.Variable(f"{node.name}_kse_codes64", dtype=np.int64)
    expanded = gs.Variable(f"{node.name}_kse_weight_expanded", dtype=weight.dtype,
                           shape=list(weight.shape))
    graph.nodes.append(gs.Node("Cast", f"{node.name}_kse_cast", {"to": onnx.TensorProto.INT64},
                               inputs=[gs.Constant(f"{node.name}_kse_codes", codes)],
                               outputs=[cast]))
    graph.nodes.append(gs.Node("Gather", f"{node.name}_kse_expand", {"axis": 0},
                               inputs=[gs.Constant(f"{node.name}_kse_codebook", table), cast],
                               outputs=[expanded]))
    node.inputs[1] = expanded
