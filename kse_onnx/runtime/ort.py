"""onnxruntime sessions and inputs for them."""

from __future__ import annotations

import math

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
    options.log_severity_level = 4  # no C++ log lines: failures are our one-line errors
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        sess = ort.InferenceSession(data, options, providers=list(providers))
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc
    if sess.get_providers()[0] != providers[0]:
        raise ModelError(f"onnxruntime fell back from {providers[0]} to "
                         f"{sess.get_providers()[0]}: no usable device for it here")
    return sess


SPATIAL = 32  # symbolic height/width of random image inputs (1x1 would test one tap)
MAX_RANDOM_ELEMENTS = 1 << 26  # per random input: 256 MiB of float32


def random_inputs(sess: ort.InferenceSession, batch: int, seed: int = 0) -> dict:
    """Standard-normal inputs; symbolic dims take ``batch`` (first axis), ``SPATIAL``
    (the last two axes of a 4-D input) or 1. An input whose declared shape holds more
    than ``MAX_RANDOM_ELEMENTS`` values is refused before anything is allocated."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        rank = len(i.shape)
        shape = [d if isinstance(d, int) and d > 0 else
                 (batch if axis == 0 else SPATIAL if rank == 4 and axis >= 2 else 1)
                 for axis, d in enumerate(i.shape)]
        dtype = _NUMPY_OF.get(i.type)
        if dtype is None:
            raise ModelError(f"input {i.name!r} has type {i.type}: give real inputs with --inputs")
        if math.prod(shape) > MAX_RANDOM_ELEMENTS:
            raise ModelError(f"input {i.name!r} declares shape {shape}: "
                             f"{math.prod(shape)} values, above the {MAX_RANDOM_ELEMENTS} "
                             "a random input may have; give real inputs with --inputs")
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run(sess: ort.InferenceSession, feeds: dict) -> list[np.ndarray]:
    return sess.run(None, feeds)


def run_batched(sess: ort.InferenceSession, feeds: dict, label: str = "the model"
                ) -> list[np.ndarray]:
    """Outputs for ``feeds``; a model whose inputs are fixed at batch b gets the samples b
    at a time (outputs concatenated on the first axis). onnxruntime's failures are one
    line naming ``label``. Array-likes (images held on disk) are read here."""
    feeds = {k: np.asarray(v) for k, v in feeds.items()}
    n = len(next(iter(feeds.values()))) if feeds else 0
    fixed = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int)
             and i.shape[0] > 0}
    step = fixed.pop() if len(fixed) == 1 else None
    same_n = all(len(v) == n for v in feeds.values()) if feeds else False
    try:
        if step is None or not same_n or n == step or n % step:
            return sess.run(None, feeds)
        parts = [sess.run(None, {k: v[s:s + step] for k, v in feeds.items()})
                 for s in range(0, n, step)]
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot run {label}: {first}") from None
    try:
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
    except ValueError:  # an output without a batch axis
        raise ModelError(f"{label} takes {step} sample(s) at a time and its outputs cannot "
                         "be joined along the batch axis: give that many inputs") from None
