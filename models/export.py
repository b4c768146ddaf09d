"""torch -> ONNX export of zoo models (legacy exporter: opset <= 17, BN folded)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch


def export(model: torch.nn.Module, input_shape, opset: int = 17) -> onnx.ModelProto:
    """ONNX of ``model`` (eval mode) with input ``input``, output ``logits``, dynamic batch."""
    buffer = io.BytesIO()
    example = torch.zeros(1, *input_shape)
    with torch.no_grad():
        torch.onnx.export(model.eval(), example, buffer, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    model_proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model_proto, full_check=True)
    return model_proto


def max_abs_diff(model: torch.nn.Module, proto: onnx.ModelProto, input_shape,
                 batch: int = 2, seed: int = 0) -> float:
    """Largest |torch - onnxruntime| output difference on a random batch."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    return float(np.abs(got - want).max())


def conv_count(proto: onnx.ModelProto) -> int:
    return sum(node.op_type == "Conv" for node in proto.graph.node)


def export_kse_resnet56(weights, path, opset: int = 17) -> Path:
    """Write the KSE authors' ResNet-56 (``.pth`` at ``weights``) as ONNX to ``path``,
    once (an existing file is kept); the graph takes the normalised input."""
    from .zoo import load_kse_resnet56

    path = Path(path)
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx.save(export(load_kse_resnet56(weights), (3, 32, 32), opset), path)
    return path
