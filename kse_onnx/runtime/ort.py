"""onnxruntime sessions and inputs for them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ModelError, OptionError, first_line
from ..options import PROVIDER_NAMES, PROVIDERS

_NUMPY_OF = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def provider_list(name: str) -> list[str]:
    """Providers to ask for ``name`` (cpu, cuda, tensorrt); an error if this onnxruntime
    build lacks it."""
    if name not in PROVIDERS:
        raise OptionError("--provider", f"must be one of {PROVIDER_NAMES}, got {name!r}")
    wanted = PROVIDERS[name]
    if wanted not in ort.get_available_providers():
        raise ModelError(f"provider {name} ({wanted}) is not available in this onnxruntime "
                         f"build (available: {', '.join(ort.get_available_providers())}); "
                         "install onnxruntime-gpu in place of onnxruntime on a GPU machine")
    return [wanted] if name == "cpu" else [wanted, "CPUExecutionProvider"]


def session(model: onnx.ModelProto | str, threads: int = 1,
            providers=("CPUExecutionProvider",)) -> ort.InferenceSession:
    """A session on ``providers``; full graph optimisation, ``threads`` intra-op threads.

    onnxruntime silently falls back to CPU when a GPU provider cannot start; that is an
    error here, so that CPU numbers are never reported as GPU numbers."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads spin for a while after each run; with several sessions timed in
    # turn they steal the cores of the next session (measured: identical models 1.3-1.5x
    # apart at 2 threads). No spinning: every session pays the same wake-up, ratios hold.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        sess = ort.InferenceSession(data, options, providers=list(providers))
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc
    if sess.get_providers()[0] != providers[0]:
        raise ModelError(f"onnxruntime fell back from {providers[0]} to "
                         f"{sess.get_providers()[0]}: no usable device for it here")
    return sess


def random_inputs(sess: ort.InferenceSession, batch: int, seed: int = 0) -> dict:
    """Standard-normal inputs; symbolic dims take ``batch`` (first axis) or 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (batch if axis == 0 else 1)
                 for axis, d in enumerate(i.shape)]
        dtype = _NUMPY_OF.get(i.type)
        if dtype is None:
            raise ModelError(f"input {i.name!r} has type {i.type}: give real inputs with --inputs")
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run(sess: ort.InferenceSession, feeds: dict) -> list[np.ndarray]:
    return sess.run(None, feeds)
