"""``finetune --quantize``: post-training INT8 of the fine-tuned model, and
quantization-aware epochs where it pays.

With labels, the INT8 model (onnxruntime) and the float model (torch) are scored on the
held-out split. If INT8 loses more than ``QAT_THRESHOLD`` (0.3 point), ``qat_epochs``
more epochs run with every shared kernel table rounded to int8 in the forward pass
(:func:`~kse_onnx.finetune.importer.fake_int8`, straight-through gradient) at the
constant ``qat_lr``, and the model is quantized again; the INT8 model with the better
held-out accuracy is kept and both scores are reported. Only the shared (KSE) kernels are
fake-quantized, as the INT8 output quantizes them per tensor, the coarsest choice;
activations are left to the calibration.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..options import QuantizeOptions
from ..quantize.apply import quantize_output
from ..runtime.ort import session
from .epochs import Diverged, EpochRunner, accuracy

QAT_THRESHOLD = 0.003


def onnx_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray,
                  batch: int = 512) -> float:
    sess = session(model, threads=0)
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def quantize_tuned(run: EpochRunner, quantize: QuantizeOptions, calibration,
                   val: np.ndarray, output) -> tuple[onnx.ModelProto, dict]:
    """(INT8 model, report entry) of the fine-tuned ``run.module``; ``calibration``: the
    int8-static calibration inputs."""
    module, opts = run.module, run.opts
    int8, info = quantize_output(module.export(), quantize, calibration)
    if run.y is None or not len(val) or quantize.quantize != "int8-static":
        return int8, info
    x_val, y_val = run.x[val], run.y[val]
    info["val_float"] = accuracy(module, x_val, y_val)
    info["val_int8"] = onnx_accuracy(int8, x_val, y_val)
    loss = info["val_float"] - info["val_int8"]
    if loss <= QAT_THRESHOLD or not opts.qat_epochs:
        info["qat"] = f"not run: INT8 loses {100 * loss:.2f} point(s) on the held-out split"
        return int8, info
    good = {k: v.clone() for k, v in module.state_dict().items()}
    module.set_fake_quant(True)
    try:
        for epoch in range(opts.qat_epochs):
            losses = run.epoch(opts.epochs + epoch, lambda step: opts.qat_lr, good,
                               label="quantization-aware epoch")
            run.log(f"quantization-aware epoch {epoch + 1}/{opts.qat_epochs}: "
                    f"loss {np.mean(losses):.4g}")
    except Diverged as exc:  # the module holds ``good`` again
        module.set_fake_quant(False)
        info["qat"] = f"quantization-aware epochs stopped ({exc}): kept the PTQ model"
        return int8, info
    module.set_fake_quant(False)
    retrained, again = quantize_output(module.export(), quantize, calibration)
    again["val_float"] = info["val_float"]
    again["val_int8_before_qat"] = info["val_int8"]
    again["val_int8"] = onnx_accuracy(retrained, x_val, y_val)
    if again["val_int8"] >= info["val_int8"]:
        again["qat"] = (f"{opts.qat_epochs} quantization-aware epoch(s): held-out INT8 "
                        f"accuracy {info['val_int8']:.4f} -> {again['val_int8']:.4f}")
        return retrained, again
    info["qat"] = (f"{opts.qat_epochs} quantization-aware epoch(s) did not help "
                   f"({again['val_int8']:.4f} < {info['val_int8']:.4f}): kept the PTQ model")
    return int8, info
