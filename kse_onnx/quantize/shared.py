"""KSE sharing in 8 bits: a quantized Conv weight stored as int8 codebook + codes.

A KSE layer's weight is W_hat[n, c] = centroid[c, a(n, c)]: output filters share kernels.
Quantized per output channel (one scale s_n per filter) the shared kernels become
different int8 kernels, so kse-onnx quantizes the weights of compressed layers with one
scale per tensor: then ``round(W_hat[n, c] / s)`` repeats exactly where W_hat repeats,
and the int8 weight is stored as its distinct kernels plus codes, like ``compact``:
``Gather(codebook_int8, Cast(codes))`` feeding the same DequantizeLinear (static, QDQ)
or ConvInteger (dynamic). Both inputs of the Gather are constants, so onnxruntime's
constant folding (basic level) turns it back into an int8 initializer before the QDQ
fusions (extended level) run: the runtime gets the same integer kernels as without
sharing, which :func:`kse_onnx.quantize.inspect.integer_convs` checks on every output.
Chosen by measurement (tools/results/int8_table.py): the shared file and the plain int8 file
time the same, within the noise, on onnxruntime CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..lowering.compact import code_dtype, codebook

INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)


def share_int8_weights(model: onnx.ModelProto, weights: set[str]) -> list[str]:
    """Rewrite, in place, each int8 initializer named in ``weights`` (4-D) whose kernels
    repeat enough to shrink it; returns the names rewritten.

    The codes index each input channel's own distinct kernels (a KSE channel has at most
    N), so they fit in uint8 up to 256 filters where one table for the whole weight would
    need uint16: ``W = Gather(table, Cast(codes) + offsets)``, ``offsets[c]`` the start
    of channel c's kernels in ``table``."""
    inits = {i.name: i for i in model.graph.initializer}
    done, expansions = [], []
    for name in sorted(weights):
        init = inits.get(name)
        if init is None or init.data_type not in INT8_TYPES or len(init.dims) != 4:
            continue
        values = numpy_helper.to_array(init)
        table, codes, offsets = channel_codebook(values)
        if table.nbytes + codes.nbytes + offsets.nbytes >= values.nbytes:
            continue
        model.graph.initializer.remove(init)
        t = f"{name}_kse"
        model.graph.initializer.extend([numpy_helper.from_array(table, f"{t}_codebook"),
                                        numpy_helper.from_array(codes, f"{t}_codes"),
                                        numpy_helper.from_array(offsets, f"{t}_offsets")])
        expansions += [
            helper.make_node("Cast", [f"{t}_codes"], [f"{t}_codes64"], name=f"{t}_cast",
                             to=TensorProto.INT64),
            helper.make_node("Add", [f"{t}_codes64", f"{t}_offsets"], [f"{t}_index"],
                             name=f"{t}_index"),
            helper.make_node("Gather", [f"{t}_codebook", f"{t}_index"], [name],
                             name=f"{t}_expand", axis=0)]
        done.append(name)
    nodes = expansions + list(model.graph.node)  # constants first: still topological
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


def channel_codebook(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table (M, kh, kw), codes (N, C), offsets (1, C) int64) with
    ``table[codes + offsets] == weight`` exactly; codes count within each channel."""
    tables, codes, offsets, start = [], [], [], 0
    for c in range(weight.shape[1]):
        table, code = codebook(weight[:, c:c + 1])
        tables.append(table)
        codes.append(code[:, 0].astype(np.int64))
        offsets.append(start)
        start += len(table)
    widest = max(len(t) for t in tables)
    return (np.concatenate(tables), np.stack(codes, axis=1).astype(code_dtype(widest)),
            np.array([offsets], dtype=np.int64))


def quantized_weight_names(model: onnx.ModelProto, convs: set[str]) -> set[str]:
    """The int8 weight initializers of the Conv nodes named in ``convs``: the input of the
    DequantizeLinear feeding the weight (QDQ), or the weight of ConvInteger (dynamic,
    which renames the node ``<name>_quant``)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name for i in model.graph.initializer}
    names = set()
    for node in model.graph.node:
        base = node.name.removesuffix("_quant")
        if base not in convs or node.op_type not in ("Conv", "ConvInteger"):
            continue
        weight = node.input[1]
        dq = producers.get(weight)
        if dq is not None and dq.op_type == "DequantizeLinear":
            weight = dq.input[0]
        if weight in inits:
            names.add(weight)
    return names
