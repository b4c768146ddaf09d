"""The per-layer latency table of the budget: each Conv timed alone on the user's runtime
at a few aligned kept counts of its input channels (outputs whole) and of its output
channels (inputs whole), one onnxruntime session per candidate, all interleaved.

A layer's time with ``cin`` inputs and ``cout`` outputs kept is predicted as
``t(cin, cout) = t_full * r_in(cin) * r_out(cout)``, ``r`` the measured ratio to the
full layer, linear between measured counts: a product, like the multiply-adds
``cin * cout * kh * kw * H * W``, but with the runtime's real steps (SIMD blocks).
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.ort import random_inputs, session

LAYER_BUDGET_S = 0.3  # timed loop per layer and timing point, all candidates together
MAX_COUNTS = 8  # measured kept counts per side at most (evenly spread multiples of step)
# INT8 kept counts are multiples of this and of --budget-step (tools/benchmarks/int8_curves.py,
# docs/budget.md): onnxruntime's integer Conv runs its output channels in blocks of 16 and
# pays for a partial block (ResNet-56 at batch 64 with 24/48 channels: 1.20x its INT8)
INT8_BLOCK = 16


def aligned_counts(size: int, step: int, limit: int = MAX_COUNTS) -> list[int]:
    """Kept counts measured for a side of ``size`` channels: multiples of ``step`` from
    ``step`` to ``size`` (``size`` itself always), at most ``limit`` of them, spread."""
    counts = list(range(step, size, step)) + [size]
    if len(counts) > limit:
        pick = np.unique(np.round(np.linspace(0, len(counts) - 1, limit)).astype(int))
        counts = [counts[i] for i in pick]
    return counts


def conv_model(cin: int, cout: int, kernel, attrs: dict, hw: tuple[int, int],
               opset: int, seed: int = 0) -> bytes:
    """One Conv (random weights, bias) on a (batch, cin, H, W) float input."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, *kernel)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                        ["batch", cin, *hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                             ).SerializeToString()


def int8_conv(model: bytes, cin: int, hw) -> bytes:
    """onnxruntime's static INT8 (QDQ) of a one-Conv model as ``--quantize int8-static``
    writes a compressed layer (:func:`..quantize.ptq.quantize_int8`: uint8 activations,
    int8 weights with one symmetric scale per tensor), calibrated on 4 random inputs
    (only its time matters): the INT8 budget times INT8 layers, whose speed by channel
    count differs from float."""
    from ..quantize.ptq import quantize_int8

    proto = onnx.load_from_string(model)
    proto.graph.node[0].name = "conv"
    x = np.random.default_rng(0).standard_normal((4, cin, *hw)).astype(np.float32)
    return quantize_int8(proto, "int8-static", {"conv"}, x, share=False)[0].SerializeToString()


def time_layer(cin: int, cout: int, kernel, attrs: dict, hw, opset: int, step: int,
               points, providers, int8: bool = False) -> dict:
    """{"in": {k: {point: ratio}}, "out": {k: {point: ratio}}, "full_ms": {point: ms}};
    with ``int8``, of the layer's INT8 versions."""
    def build(c_in, c_out):
        model = conv_model(c_in, c_out, kernel, attrs, hw, opset)
        return int8_conv(model, c_in, hw) if int8 else model

    models = {"full": build(cin, cout)}
    for k in aligned_counts(cin, step)[:-1]:
        models[f"in{k}"] = build(k, cout)
    for k in aligned_counts(cout, step)[:-1]:
        models[f"out{k}"] = build(cin, k)
    entry = {"in": {cin: {}}, "out": {cout: {}}, "full_ms": {}}
    for batch, threads in points:
        key = f"b{batch}t{threads}"
        medians = interleaved_own_inputs(models, batch, threads, providers)
        for label, ms in medians.items():
            if label == "full":
                entry["full_ms"][key] = round(ms, 5)
                entry["in"][cin][key] = entry["out"][cout][key] = 1.0
            else:
                side = "in" if label.startswith("in") else "out"
                entry[side].setdefault(int(label[len(side):]), {})[key] = round(
                    ms / medians["full"], 5)
    return {"in": dict(sorted(entry["in"].items())), "out": dict(sorted(entry["out"].items())),
            "full_ms": entry["full_ms"]}


def interleaved_own_inputs(models: dict, batch: int, threads: int, providers,
                           budget_s: float = LAYER_BUDGET_S, repeats: int = 200,
                           min_repeats: int = 7) -> dict[str, float]:
    """Median ms of each model, run in turn within each repeat (as
    :func:`..runtime.bench.interleaved_latency`), each on its own random input (the
    candidates differ in their input channels)."""
    sessions = {k: session(m, threads=threads, providers=providers) for k, m in models.items()}
    feeds = {k: random_inputs(s, batch, 0) for k, s in sessions.items()}
    start = time.perf_counter()
    for k, s in sessions.items():
        s.run(None, feeds[k])
    round_s = time.perf_counter() - start
    repeats = max(min_repeats, min(repeats, int(budget_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[k])
            samples[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) * 1e3 for k, v in samples.items()}


def ratio(side: dict, k: int, key: str) -> float:
    """The measured ratio at kept count ``k`` (linear between measured counts)."""
    counts = sorted(int(c) for c in side)
    values = [side[c][key] if c in side else side[str(c)][key] for c in counts]
    return float(np.interp(k, counts, values))


def predict_ms(entry: dict, cin: int, cout: int, key: str) -> float:
    """``t_full * r_in(cin) * r_out(cout)`` at timing point ``key``."""
    return entry["full_ms"][key] * ratio(entry["in"], cin, key) * ratio(entry["out"], cout, key)
