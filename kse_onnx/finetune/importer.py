"""ONNX -> torch: a small interpreter whose parameters are the model's weights.

Why our own interpreter rather than onnx2torch: onnx2torch (last release 2024) rebuilds
the graph from its own modules, so the trained values cannot be written back into the
*same* graph, and it fails on the dynamo exporter's opsets and on ``Identity``-merged
biases. Here every node runs as the matching torch op in graph order (the one
interpreter, :class:`kse_onnx.onnx_torch.interpreter.Interpreter`), and every float
initializer is a parameter (or a fixed buffer) keyed by its ONNX name, so
export is "write the tensors back": structure unchanged by construction. A node that
the op table (:mod:`kse_onnx.onnx_torch.ops`) cannot compute exactly as onnxruntime
does (an unknown operator, or a setting such as Resize ``mode=cubic``) is refused when
the model is imported, every such node listed in one error, never at a later forward
pass.

Sharing: the weight of each Conv that kse-onnx compressed (listed in the model's
metadata) is re-expressed as ``W = table[codes]`` with ``table`` its distinct kernels:
training updates each shared kernel once with the sum of its users' gradients (docs/algorithm.md,
section 8) and cannot break the sharing. The all-zero kernel (pruned and alignment
channels) stays fixed at zero. The factored form's 0/1 fusion weights stay fixed.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..graph.export import settings_of
from ..graph.io import load_model
from ..graph.settings import RecordedSettings
from ..lowering.compact import codebook
from ..onnx_torch.interpreter import Interpreter, constant_value

FIXED_SUFFIXES = ("_kse_select",)
# inputs that are settings, not weights: never trained even when float
SETTING_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3), "Clip": (1, 2)}


class SharedWeight(nn.Module):
    """``table[codes]`` (or ``table`` alone for a stored codebook), with all-zero kernels
    (pruned and alignment channels) held at zero."""

    def __init__(self, weight: np.ndarray, is_codebook: bool = False):
        super().__init__()
        table, codes = (weight, None) if is_codebook else codebook(weight)
        self.table = nn.Parameter(torch.from_numpy(np.array(table, dtype=np.float32)))
        self.codes = None if codes is None else nn.Buffer(torch.from_numpy(
            codes.astype(np.int64)))
        nonzero = np.abs(table).reshape(len(table), -1).sum(1) > 0
        shape = (len(table),) + (1,) * (table.ndim - 1)
        self.keep = nn.Buffer(torch.from_numpy(nonzero.reshape(shape).astype(np.float32)))
        self.fake_quant = False

    def forward(self) -> torch.Tensor:
        table = self.table * self.keep
        if self.fake_quant:
            table = fake_int8(table)
        return table if self.codes is None else table[self.codes]


def fake_int8(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor int8 rounding of ``w`` (the scale kse-onnx's INT8 output gives
    a compressed layer: ``s = max|w| / 127.5``), with the straight-through estimator: the
    forward pass sees the rounded kernels, the gradient passes as if unrounded."""
    scale = (w.detach().abs().max() / 127.5).clamp_min(1e-12)
    rounded = torch.clamp(torch.round(w / scale), -128, 127) * scale
    return w + (rounded - w).detach()


class OnnxModule(nn.Module):
    """Runs an ONNX graph with torch; ``forward(*inputs)`` returns the graph outputs."""

    def __init__(self, model: onnx.ModelProto, where: str = "model"):
        super().__init__()
        self.model = model
        graph = model.graph
        self.interpreter = Interpreter(model, where)
        compressed = (settings_of(model, where) or RecordedSettings()).compressed
        shared = {n.input[1] for n in graph.node if n.op_type == "Conv" and n.name in compressed}
        # BatchNormalization runs with its stored statistics (inference mode): its mean
        # and variance are fixed, its scale and bias train.
        fixed = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization"
                 for i in (3, 4)}
        fixed |= {n.input[i] for n in graph.node for i in SETTING_INPUTS.get(n.op_type, ())
                  if i < len(n.input)}
        self.params = nn.ParameterDict()
        self.shared = nn.ModuleDict()
        self._key = {}
        self._fixed: dict[str, torch.Tensor] = {}
        for init in graph.initializer:
            self._add(init.name, numpy_helper.to_array(init), init.name in shared,
                      init.name in fixed)
        for node in graph.node:
            if node.op_type == "Constant":
                self._add(node.output[0], constant_value(node), node.output[0] in shared,
                          node.output[0] in fixed or node.attribute[0].name != "value")
        self.inputs = [i.name for i in graph.input if i.name not in self._key]
        self.outputs = [o.name for o in graph.output]
        self.capture: set[str] = set()  # inner tensors forward() keeps in self.captured
        self.captured: dict[str, torch.Tensor] = {}

    def _add(self, name: str, value: np.ndarray, shared: bool, fixed: bool) -> None:
        key = f"t{len(self._key)}"
        self._key[name] = key
        if shared or name.endswith("_kse_codebook"):
            self.shared[key] = SharedWeight(value, is_codebook=not shared)
        elif (value.dtype.kind == "f" and not fixed and value.size > 1
              and not name.endswith(FIXED_SUFFIXES)):
            self.params[key] = nn.Parameter(torch.from_numpy(value.astype(np.float32)))
        else:
            self._fixed[name] = torch.from_numpy(np.array(value))

    def set_fake_quant(self, on: bool) -> None:
        """Fake int8 rounding of every shared (KSE) weight, for quantization-aware epochs."""
        for weight in self.shared.values():
            weight.fake_quant = on

    def tensor(self, name: str) -> torch.Tensor:
        key = self._key[name]
        if key in self.shared:
            return self.shared[key]()
        if key in self.params:
            return self.params[key]
        return self._fixed[name]

    def forward(self, *inputs: torch.Tensor):
        env = self.interpreter.run(dict(zip(self.inputs, inputs, strict=True)),
                                   lookup=self.tensor)
        self.captured = {name: env[name] for name in self.capture}
        out = [env[name] for name in self.outputs]
        return out[0] if len(out) == 1 else tuple(out)

    def export(self) -> onnx.ModelProto:
        """The input model with every trained value written back in its own dtype."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for init in model.graph.initializer:
            self._write(init, init.name)
        for node in model.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self._write(attr.t, node.output[0])
        return model

    def _write(self, tensor: onnx.TensorProto, name: str) -> None:
        key = self._key[name]
        if key not in self.params and key not in self.shared:
            return
        original = numpy_helper.to_array(tensor)
        with torch.no_grad():
            value = self.tensor(name).detach().cpu().numpy().astype(original.dtype)
        if not np.array_equal(value, original):
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def import_model(path_or_model, where: str | None = None) -> OnnxModule:
    """The torch module of an ONNX model (or file); unmappable nodes refused here."""
    if isinstance(path_or_model, onnx.ModelProto):
        return OnnxModule(path_or_model, where or "model")
    return OnnxModule(load_model(path_or_model), where or str(path_or_model))


