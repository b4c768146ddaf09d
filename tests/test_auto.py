"""The ``auto`` lowering: candidate forms, the choice rule, the whole-model fallback,
exactness of what it writes, replay of recorded forms, and provider errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphs import photo_batch, residual_net
from kse_onnx.analysis.plan import plan_layer
from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.lowering import LayerForm, auto
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.runtime.bench import Timing
from kse_onnx.verify import verify
from optimizing import optimize_graph

NET, G5T1 = residual_net(32, hw=16), KSEOptions(G=5, T=1)  # what ``auto`` is run on


def _choice(times, macs):
    """A LayerChoice with times {label: {batch: ms}} and multiply-adds {label: n}."""
    return auto.LayerChoice("conv", auto.WHOLE, times, macs)


def test_candidates_are_whole_distinct_counts_and_factored():
    rng = np.random.default_rng(0)
    plan = plan_layer(rng.standard_normal((32, 32, 3, 3)).astype(np.float32), KSEOptions())
    forms = auto.candidate_forms(plan)
    labels = [f.label for f in forms]
    assert labels[0] == "whole" and labels[-1] == "factored/align1"
    counts = [len(f.keep(plan)) for f in forms[:-1]]
    assert len(set(counts)) == len(counts) and counts[0] == 32
    kept = int((plan.q > 0).sum())
    assert kept < 32 and kept in counts  # align 1 is always a candidate when it differs


@pytest.mark.parametrize("times, chosen", [
    # fastest wins
    ({"whole": 1.0, "dense/align8": 0.8, "dense/align1": 0.9}, "dense/align8"),
    # within the tolerance of the fastest: the fewest multiply-adds
    ({"whole": 1.0, "dense/align8": 0.9, "dense/align1": 0.91}, "dense/align1"),
    # slower than whole beyond half the tolerance: never chosen, even with fewer MACs
    ({"whole": 1.0, "dense/align8": 1.05, "dense/align1": 1.2}, "whole"),
    # equal to whole within the tolerance: fewer multiply-adds at no time
    ({"whole": 1.0, "dense/align8": 1.005, "dense/align1": 1.3}, "dense/align8"),
])
def test_pick_fastest_then_fewest_macs(times, chosen):
    macs = {"whole": 100, "dense/align8": 90, "dense/align1": 80}
    choice = _choice({k: {1: v} for k, v in times.items()}, macs)
    assert auto.pick(choice, 0.02).label == chosen


def test_pick_needs_no_slower_at_every_batch():
    times = {"whole": {1: 1.0, 64: 1.0}, "dense/align1": {1: 0.8, 64: 1.10}}
    choice = _choice(times, {"whole": 100, "dense/align1": 80})
    assert auto.pick(choice, 0.02).label == "whole"


def test_layer_form_labels_round_trip():
    for form in (auto.WHOLE, LayerForm("dense", 4), LayerForm("factored", 1)):
        assert LayerForm.parse(form.label) == form
    with pytest.raises(ValueError):
        LayerForm.parse("sparse/align2")


def test_auto_output_is_exact_and_reports_every_layer(tmp_path):
    src, dst, report = optimize_graph(tmp_path, NET, G5T1, LowerOptions(batches="1,4"))
    photos = tmp_path / "photos.npz"
    np.savez(photos, x=photo_batch((2, 3, 16, 16)))
    result = verify(src, dst, inputs=photos, rtol=1e-5)
    assert result.exact, result.summary()  # random and photo inputs
    data = report.to_dict()
    compressed = [x["name"] for x in data["layers"] if x["status"] == "compressed"]
    layers = data["auto"]["layers"]
    assert sorted(layers) == sorted(compressed)
    for name in compressed:
        entry = layers[name]
        assert set(entry["times_ms"]["whole"]) == {"b1t1", "b4t1"}
        assert entry["chosen"] in entry["times_ms"]
    assert {c["batch"] for c in data["auto"]["checks"]} == {1, 4}
    assert data["settings"]["layer_forms"] == {n: layers[n]["chosen"] for n in compressed}
    assert all(x["lowering"] for x in data["layers"] if x["status"] == "compressed")


def test_recorded_forms_rebuild_the_same_bytes(tmp_path):
    src, first, report = optimize_graph(tmp_path, NET, G5T1, LowerOptions())
    report.write_json(tmp_path / "report.json")
    for choices in (first, tmp_path / "report.json"):
        _, again, replay = optimize_graph(tmp_path, NET, G5T1, LowerOptions(choices=str(choices)),
                                          dst="again.onnx")
        assert again.read_bytes() == first.read_bytes()
        assert "not timed" in replay.extra["auto"]["verdict"]


def test_choices_from_a_model_without_forms_is_a_usage_error(tmp_path, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(residual_net(16), src)
    dst = tmp_path / "out.onnx"
    assert main(["optimize", str(src), str(dst), "--choices", str(src)]) == 2
    err = capsys.readouterr().err
    assert "--choices" in err and "records no layer forms" in err and not dst.exists()


@pytest.mark.parametrize("provider, name", [("cuda", "CUDAExecutionProvider"),
                                            ("tensorrt", "TensorrtExecutionProvider")])
def test_unavailable_provider_fails_clearly_and_writes_nothing(tmp_path, capsys, provider,
                                                               name):
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(residual_net(16), src)
    assert main(["optimize", str(src), str(dst), "--provider", provider]) == 1
    err = capsys.readouterr().err.strip()
    assert name in err and "not available" in err
    assert len(err.splitlines()) == 1 and not dst.exists()


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_fallback_to_cpu_is_an_error(tmp_path, capsys, monkeypatch):
    """A build that lists CUDA but cannot start it (onnxruntime-gpu without a GPU) runs
    on the CPU without complaint; kse-onnx refuses to report those times as CUDA's."""
    from kse_onnx.runtime import ort as ort_module

    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort_module.ort, "get_available_providers", lambda: listed)
    src = tmp_path / "in.onnx"
    onnx.save(residual_net(16), src)
    assert main(["bench", str(src), "--provider", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert "fell back from CUDAExecutionProvider" in err and len(err.splitlines()) == 1


class FakeClock:
    """Stands in for interleaved_latency: the optimized model is slower than the original
    by ``slow_per_layer`` for each layer not put back to ``whole``."""

    def __init__(self, slow_per_layer: float):
        self.slow = slow_per_layer
        self.rounds = []

    def __call__(self, models, batch, *args, **kwargs):
        if "original" not in models:  # per-layer timing: every candidate looks fast
            return [Timing(label, 1.0 if label == "whole" else 0.5, 1.0) for label in models]
        built = next(label for label in models if label in ("dense", "compact"))
        forms = json.loads(_settings(models[built]))["layer_forms"]
        changed = sum(label != "whole" for label in forms.values())
        if built == "compact":
            self.rounds.append(changed)
        ratio = 1 + self.slow * changed
        return [Timing("original", 1.0, 1.0), Timing("original again", 1.0, 1.0),
                Timing(built, ratio, ratio)]


def _settings(model) -> str:
    """The kse-onnx settings of a serialized model or of an onnxruntime session."""
    if hasattr(model, "get_modelmeta"):
        return model.get_modelmeta().custom_metadata_map["kse_onnx"]
    proto = onnx.load_from_string(model)
    return next(p.value for p in proto.metadata_props if p.key == "kse_onnx")


def test_whole_model_check_puts_layers_back_until_no_slower(tmp_path, monkeypatch):
    clock = FakeClock(slow_per_layer=0.01)
    monkeypatch.setattr(auto, "interleaved_latency", clock)
    # one timing point per round
    src, dst, report = optimize_graph(tmp_path, NET, G5T1, LowerOptions(batches="1"))
    changed, expected = clock.rounds, []
    reverted, step = 0, 1
    while True:  # 1, 2, 4, ... layers back to whole until 1 + 0.01 * changed <= 1.02
        expected.append(changed[0] - reverted)
        if expected[-1] <= 2:
            break
        reverted, step = reverted + step, step * 2
    assert changed[0] > 2 and changed == expected
    assert f"after putting {reverted} layer(s) back" in report.extra["auto"]["verdict"]
    assert verify(src, dst, rtol=1e-5).exact


def test_whole_model_check_ends_with_every_layer_whole(tmp_path, monkeypatch):
    clock = FakeClock(slow_per_layer=1.0)  # slower whatever stays changed
    monkeypatch.setattr(auto, "interleaved_latency", clock)
    src, dst, report = optimize_graph(tmp_path, NET, G5T1, LowerOptions(batches="1"))
    assert clock.rounds[-1] == 0
    forms = report.settings["layer_forms"]
    assert set(forms.values()) == {"whole"}
    convs_in = [n for n in onnx.load(src).graph.node if n.op_type == "Conv"]
    convs_out = [n for n in onnx.load(dst).graph.node if n.op_type == "Conv"]
    assert len(convs_in) == len(convs_out)  # the original's graph, W_hat weights
    assert verify(src, dst, rtol=1e-5).exact


def _repeated_layers(path):
    """stem, then three 16->16 convs (conv3, conv5, conv7); the last two have the same
    weights, so the same plan and the same candidate graphs (their producers are 16->16
    convs too)."""
    from onnx import numpy_helper

    from graphs import GraphBuilder

    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    for _ in range(3):
        x = b.relu(b.conv(x, 16, 16))
    model = b.model(b.head(x, 16))
    inits = {t.name: t for t in model.graph.initializer}
    for part in ("weight", "bias"):
        inits[f"conv7.{part}"].CopyFrom(numpy_helper.from_array(
            numpy_helper.to_array(inits[f"conv5.{part}"]), f"conv7.{part}"))
    onnx.save(model, path)


def test_layers_with_one_timing_signature_are_timed_once(tmp_path, monkeypatch):
    calls = []
    real = auto.interleaved_latency

    def counting(models, *args, **kwargs):
        calls.append(sorted(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(auto, "interleaved_latency", counting)
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    _repeated_layers(src)
    report = optimize(src, dst, KSEOptions(G=5, T=1),
                      lower_options=LowerOptions(batches="1"))
    layers = report.extra["auto"]["layers"]
    assert set(layers) == {"conv3", "conv5", "conv7"}
    assert layers["conv7"]["timed_with"] == "conv5"
    assert layers["conv5"]["timed_with"] == "conv5" and layers["conv3"]["timed_with"] == "conv3"
    assert layers["conv7"]["signature"] == layers["conv5"]["signature"] != \
        layers["conv3"]["signature"]
    assert layers["conv7"]["times_ms"] == layers["conv5"]["times_ms"]
    assert layers["conv7"]["timed_pick"] == layers["conv5"]["timed_pick"]
    per_layer = [c for c in calls if "whole" in c]
    assert len(per_layer) == 2  # conv3 and conv5, at one batch; conv7 reused conv5's
    again = tmp_path / "again.onnx"
    optimize(src, again, KSEOptions(G=5, T=1),
             lower_options=LowerOptions(batches="1", choices=str(dst)))
    assert again.read_bytes() == dst.read_bytes()


def test_signature_ignores_names_and_values_not_shapes():
    from onnx import TensorProto, helper, numpy_helper

    from kse_onnx.graph.signature import timing_signature

    def conv(prefix, c, value):
        w = numpy_helper.from_array(np.full((c, c, 3, 3), value, np.float32), f"{prefix}w")
        node = helper.make_node("Conv", [f"{prefix}x", f"{prefix}w"], [f"{prefix}y"],
                                name=f"{prefix}conv", pads=[1, 1, 1, 1])
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info(f"{prefix}x", TensorProto.FLOAT,
                                                        ["batch", c, 8, 8])],
            [helper.make_tensor_value_info(f"{prefix}y", TensorProto.FLOAT, None)], [w])
        return helper.make_model(graph)

    same = timing_signature({"whole": conv("a", 4, 1.0)})
    assert timing_signature({"whole": conv("b", 4, 2.0)}) == same
    assert timing_signature({"whole": conv("a", 8, 1.0)}) != same
    assert timing_signature({"dense/align1": conv("a", 4, 1.0)}) != same


def _bench_model(heavy: bool) -> onnx.ModelProto:
    from graphs import GraphBuilder

    b = GraphBuilder(32, 32)
    x = b.input.name
    x = b.conv(x, 32, 32) if heavy else b.relu(x)
    return b.model(x, shape=("batch", 32, 32, 32))


def test_a_clearly_slower_model_stops_being_timed():
    from kse_onnx.runtime.bench import interleaved_latency

    models = {"fast": _bench_model(False), "slow": _bench_model(True)}
    timings = {t.label: t for t in interleaved_latency(models, 1, repeats=12, warmup=1,
                                                       drop_slower=1.25, drop_after=3)}
    # a conv vs a Relu (10x): dropped at the first check, round 3, unless a loaded machine
    # made its first medians close; never timed to the end
    assert timings["fast"].runs == 12 and 3 <= timings["slow"].runs < 12
    kept = {t.label: t for t in interleaved_latency(models, 1, repeats=12, warmup=1)}
    assert kept["slow"].runs == 12  # off by default


def test_a_settled_verdict_ends_the_loop():
    from kse_onnx.runtime.bench import interleaved_latency

    models = {"a": _bench_model(False), "b": _bench_model(False)}
    asked = []

    def settled(medians):
        asked.append(sorted(medians))
        return True

    timings = interleaved_latency(models, 1, repeats=20, warmup=1, min_repeats=4,
                                  settled=settled)
    assert [t.runs for t in timings] == [4, 4] and asked == [["a", "b"]]
