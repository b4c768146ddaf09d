"""The last check of ``optimize``: onnxruntime loads the output and runs it once.

``onnx.checker`` passes graphs onnxruntime rejects (a Conv whose weight has the wrong
number of input channels is found only when it runs), so before anything is written:
1. the output must load in onnxruntime, unless the input model does not load either
   (onnxruntime's CPU provider has no float64 or bfloat16 Conv: a runtime limit, noted);
2. one batch-1 run on random inputs: an output that fails where the input runs is an
   error; when both fail, it is an error if every input dimension but the batch is
   declared (the random input is then what the model asks for), else the check is noted
   as inconclusive (a symbolic height or width may not suit the model).
"""

from __future__ import annotations

import onnx

from ..errors import ModelError
from .ort import random_inputs, session


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def runtime_check(optimized: onnx.ModelProto, original: onnx.ModelProto, where) -> str:
    """A one-line note of what was checked; ModelError naming ``where`` on failure."""
    try:
        sess = session(optimized)
    except ModelError as exc:
        try:
            session(original)
        except ModelError:
            return "onnxruntime loads neither the input nor the output here: not run"
        raise ModelError(f"{where}: the optimized model does not load in onnxruntime "
                         f"(the input model does): {exc}") from None
    try:
        feeds = random_inputs(sess, 1)
    except ModelError as exc:
        return f"loaded in onnxruntime; not run ({exc})"
    try:
        sess.run(None, feeds)
        return "loaded and run once in onnxruntime"
    except Exception as exc:
        failure = _first_line(exc)
    try:
        session(original).run(None, feeds)
    except Exception:
        declared = all(isinstance(d, int) and d > 0 for i in sess.get_inputs()
                       for d in i.shape[1:])
        if not declared:
            return ("loaded in onnxruntime; a run on random inputs failed for the input "
                    "model too (symbolic sizes): inconclusive")
        raise ModelError(f"{where}: onnxruntime cannot run the model (the input model "
                         f"fails the same way): {failure}") from None
    raise ModelError(f"{where}: the optimized model fails in onnxruntime where the input "
                     f"model runs: {failure}")
