"""The latency budget (--target-latency): channel streams (residual and padded
shortcuts), their exact pruning, the greedy allocation, the search, replay, and the
out-of-reach error. Whole-model times are replaced by multiply-add ratios (a
deterministic stand-in), so no test depends on the machine's speed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphs import GraphBuilder, photo_batch, residual_prefix
from kse_onnx.analysis.plan import plan_layer
from kse_onnx.api import optimize
from kse_onnx.budget import allocate, search, table
from kse_onnx.budget.spans import Cuts, Span
from kse_onnx.cli import main
from kse_onnx.errors import OptionError
from kse_onnx.graph.core import import_graph
from kse_onnx.graph.count import conv_counts
from kse_onnx.graph.groups import masked_model, residual_groups
from kse_onnx.options import BudgetOptions, KSEOptions, LowerOptions
from kse_onnx.runtime.ort import session
from kse_onnx.verify import verify
from optimizing import training

ROOT = Path(__file__).resolve().parents[1]


def padded_resnet(width: int = 8, hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Stem, an identity block, a downsampling block with the parameter-free "option A"
    shortcut (strided Slice + channel Pad with zeros), and the classifier head."""
    b, x, y = residual_prefix(width, hw, seed)
    wide = 2 * width
    starts, ends = b.const(np.array([0, 0])), b.const(np.array([hw, hw]))
    axes, steps = b.const(np.array([2, 3])), b.const(np.array([2, 2]))
    sliced = b.op("Slice", [x, starts, ends, axes, steps])
    quarter = width // 2
    pads = b.const(np.array([0, quarter, 0, 0, 0, quarter, 0, 0], dtype=np.int64))
    shortcut = b.op("Pad", [sliced, pads], mode="constant")
    x = b.relu(b.op("Add", [y, shortcut]))
    return b.model(b.head(x, wide))


def run(model, x):
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture
def macs_as_time(monkeypatch):
    """Whole-model and per-layer "times" are multiply-add counts: deterministic."""
    def measure(models, points, providers):
        macs = {k: conv_counts(onnx.load_from_string(m) if isinstance(m, bytes) else m)["macs"]
                for k, m in models.items()}
        base = next(iter(macs.values()))
        keys = [f"b{b}t{t}" for b, t in points]
        out = {k: dict.fromkeys(keys, round(v / base, 4)) for k, v in macs.items()}
        out.update({f"{k} ms": dict.fromkeys(keys, v / 1e6) for k, v in macs.items()})
        return out

    def layer(cin, cout, kernel, attrs, hw, opset, step, points, providers, int8=False):
        keys = [f"b{b}t{t}" for b, t in points]
        side = {"in": {}, "out": {}}
        for name, size in (("in", cin), ("out", cout)):
            for k in table.aligned_counts(size, step):
                side[name][k] = dict.fromkeys(keys, k / size)
        ms = cin * cout * int(np.prod(kernel)) * hw[0] * hw[1] / 1e6
        return {**side, "full_ms": dict.fromkeys(keys, ms)}

    monkeypatch.setattr(search, "measure", measure)
    monkeypatch.setattr(search, "time_layer", layer)


def test_streams_of_a_padded_resnet():
    """One stream from the stem to the head: 8 classes born in stage 1 run through the
    Pad into stage 2 (output channels 4..11), 8 more are born there; 3 readers."""
    graph = import_graph(padded_resnet())
    (stream,) = residual_groups(graph)
    assert stream.n_classes == 16
    assert sorted(len(s) for s in stream.spans()) == [8, 8]
    assert len(stream.readers) == 2 and len(stream.producers) == 3
    assert len(stream.gemms) == 1
    pad = next(n for n in stream.ops if n.op == "Pad")
    stage1 = stream.channels[pad.inputs[0].name]
    stage2 = stream.channels[pad.outputs[0].name]
    assert np.array_equal(stage2[4:12], stage1)
    assert not set(stage2[:4]) & set(stage1) and not set(stage2[12:]) & set(stage1)


def test_streams_of_the_bundled_resnet20():
    """The exported ResNet-20 computes its Pad amounts in-graph: they are folded."""
    graph = import_graph(onnx.load(ROOT / "models" / "fmnist_resnet20.onnx"))
    (stream,) = residual_groups(graph)
    assert stream.n_classes == 64
    assert [len(s) for s in stream.spans()] == [16, 16, 32]
    assert len(stream.readers) == 9 and len(stream.producers) == 10


def test_a_concat_ends_a_stream():
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 8))
    y = b.conv(x, 8, 8)
    z = b.op("Concat", [x, y], axis=1)
    model = b.model(b.head(b.conv(z, 16, 8), 8))
    assert residual_groups(import_graph(model)) == []


def test_masked_then_pruned_stream_is_exact():
    """Mask classes, then remove them from producers, Pad and classifier (readers read
    them with zero weight): same outputs as the masked model with zeroed reader columns."""
    from kse_onnx.graph.export import export_model
    from kse_onnx.graph.settings import RecordedSettings

    model = padded_resnet()
    graph = import_graph(model)
    (stream,) = residual_groups(graph)
    kept = np.array([0, 2, 3, 5, 8, 9, 12, 15])
    masked = masked_model(model, {stream.key: kept.tolist()})
    reference = import_graph(masked)
    (ref_stream,) = residual_groups(reference)
    for r in ref_stream.readers:  # zero columns, the same graph otherwise
        w = r.inputs[1].values.copy()
        dropped = np.setdiff1d(np.arange(w.shape[1]), ref_stream.kept(r.inputs[0].name, kept))
        w[:, dropped] = 0
        r.inputs[1].values = w
    graph = import_graph(masked)
    (stream,) = residual_groups(graph)
    for r in stream.readers:
        keep = stream.kept(r.inputs[0].name, kept)
        r.inputs[1].values = np.ascontiguousarray(r.inputs[1].values[:, keep])
    stream.prune(kept)
    graph.cleanup().toposort()
    pruned = export_model(graph, model, RecordedSettings())
    x = photo_batch((2, 3, 8, 8))
    expect = run(export_model(reference, model, RecordedSettings()), x)
    np.testing.assert_allclose(run(pruned, x), expect, rtol=1e-5, atol=1e-5)
    assert not np.allclose(run(model, x), expect)  # the mask changed something


def test_mask_zeroes_the_stream_channels():
    model = padded_resnet()
    graph = import_graph(model)
    (stream,) = residual_groups(graph)
    keep = [1, 2]
    stream.mask(keep)
    lively = 0
    for conv in stream.producers:
        w = conv.inputs[1].values
        live = np.isin(stream.channels[conv.outputs[0].name], keep)
        assert np.all(w[~live] == 0) and np.all(conv.inputs[2].values[~live] == 0)
        lively += int(np.any(w[live] != 0))
    assert lively >= 1


def test_kept_override_of_a_plan():
    """Exactly the kept channels survive; those KSE would prune are lifted to level 1."""
    w = np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32)
    free = plan_layer(w, KSEOptions(G=4))
    kept = np.array([0, 1, 2, 3])
    plan = plan_layer(w, KSEOptions(G=4), kept=kept)
    assert np.array_equal(plan.kept_channels, kept)
    lifted = kept[free.q[kept] == 0]
    assert np.all(plan.levels[lifted] == 1) and np.all(plan.q[lifted] == 16 // 4)
    assert np.all(plan.w_hat[:, 4:] == 0)
    with pytest.raises(ValueError, match="kept channels"):
        plan_layer(w, KSEOptions(G=4), kept=np.array([9]))


def _cuts(masses: list[list[float]], size: int = 8) -> tuple[Cuts, allocate.Predictor]:
    units, geometry, tab = [], {}, {}
    for i, mass in enumerate(masses):
        name = f"c{i}"
        order = np.argsort(mass, kind="stable")
        units.append(Span(name, order, np.asarray(mass)[order], [name], []))
        geometry[name] = {"cin": size, "cout": size}
        tab[name] = {"in": {k: {"p": k / size} for k in (4, 8)},
                     "out": {size: {"p": 1.0}}, "full_ms": {"p": 1.0}}
    cuts = Cuts(units, {}, geometry)
    return cuts, allocate.Predictor(cuts, tab, {"p": 10.0})


def test_greedy_cuts_the_least_mass_first():
    """Two equal layers (1 ms of a 10 ms model each; half the inputs, half the time);
    cutting either saves the same time: the one with less mass goes."""
    cuts, predictor = _cuts([[1.0] * 8, [0.1] * 8])
    got = allocate.allocate(cuts, predictor, 4, {"p": 0.96})
    assert got.reachable and got.kept == {"c0": 8, "c1": 4}
    assert got.predicted["p"] == pytest.approx(0.95)
    got = allocate.allocate(cuts, predictor, 4, {"p": 0.85})
    assert not got.reachable and got.kept == {"c0": 4, "c1": 4}


def test_give_back_restores_steps_the_target_allows():
    cuts, predictor = _cuts([[1.0] * 8, [0.1] * 8])
    kept, ratios = allocate.give_back(cuts, predictor, 4, {"p": 0.96}, {"c0": 4, "c1": 4},
                                      {"p": 0.9})
    assert kept == {"c0": 8, "c1": 4} and ratios["p"] == pytest.approx(0.95)


def test_aligned_counts():
    assert table.aligned_counts(16, 4) == [4, 8, 12, 16]
    counts = table.aligned_counts(64, 4)
    assert len(counts) == table.MAX_COUNTS and counts[0] == 4 and counts[-1] == 64
    assert all(c % 4 == 0 for c in counts)


def test_budget_end_to_end_replay_and_verify(tmp_path, macs_as_time):
    """R = 0.6 by the stand-in clock: met, recorded, verified exact (stream channels
    pruned through the Pad and the classifier), and replayed byte for byte."""
    src, out, again = tmp_path / "m.onnx", tmp_path / "b.onnx", tmp_path / "again.onnx"
    onnx.save(padded_resnet(width=16, hw=8), src)
    lowering = LowerOptions("compact", batches="1,8")
    report = optimize(src, out, KSEOptions(G=4), lower_options=lowering,
                      budget=BudgetOptions(0.6))
    budget = report.extra["budget"]
    assert budget["target_latency"] == 0.6
    ratios = [max(m["ratio"].values()) for m in budget["measured"]]
    assert min(ratios) <= 0.6 and 0 < budget["indicator_mass_kept"] < 1
    assert budget["table"] and budget["smallest_model"]["ratio"]
    assert conv_counts(onnx.load(out))["macs"] <= 0.6 * conv_counts(onnx.load(src))["macs"]
    settings = report.settings
    assert settings["budget_streams"], "the residual stream was pruned"
    result = verify(src, out)
    assert result.exact, result.summary()
    replay = LowerOptions("compact", batches="1,8", choices=str(out))
    replayed = optimize(src, again, KSEOptions(G=4), lower_options=replay,
                        budget=BudgetOptions(0.6))
    assert out.read_bytes() == again.read_bytes()
    assert "latency budget 0.6 x the original: measured b1t1" in report.table()
    assert "kept channels taken from" in replayed.table()
    report.write_json(tmp_path / "r.json")  # the JSON report replays too
    third = tmp_path / "third.onnx"
    optimize(src, third, KSEOptions(G=4), budget=BudgetOptions(0.6),
             lower_options=LowerOptions("compact", choices=str(tmp_path / "r.json")))
    assert third.read_bytes() == out.read_bytes()


def test_out_of_reach_is_one_clean_error(tmp_path, macs_as_time, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(padded_resnet(width=16, hw=8), src)
    with pytest.raises(OptionError, match=r"best reachable ratio is 0\.\d+x"):
        optimize(src, out, lower_options=LowerOptions("compact"), budget=BudgetOptions(0.01))
    assert not out.exists()
    code = main(["optimize", str(src), str(out), "--target-latency", "0.01"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--target-latency" in err and "best reachable" in err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("value", [1.0, -0.1, "x", True])
def test_bad_target_latency(value):
    with pytest.raises(OptionError, match="--target-latency"):
        BudgetOptions(value)


def test_refit_and_finetune_work_on_a_budget_model(tmp_path, macs_as_time):
    pytest.importorskip("torch")
    from kse_onnx.api import refit
    from kse_onnx.finetune.train import finetune
    from kse_onnx.options import CalibrationOptions, DataOptions, FinetuneOptions

    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(padded_resnet(width=16, hw=8), src)
    images = tmp_path / "images.npz"
    np.savez(images, x=photo_batch((32, 3, 8, 8), seed=1))
    optimize(src, out, lower_options=LowerOptions("compact"), budget=BudgetOptions(0.6))
    refitted = tmp_path / "refit.onnx"
    refit(out, refitted, src, CalibrationOptions(str(images)))
    assert verify(src, refitted).exact
    assert onnx.load(refitted).graph.node  # same shapes as the budget model:
    x = photo_batch((2, 3, 8, 8))
    assert run(onnx.load(refitted), x).shape == run(onnx.load(out), x).shape
    tuned = tmp_path / "tuned.onnx"
    finetune(refitted, tuned, src, training(images, refitted),
             FinetuneOptions(epochs=1, batch=16, threads=1, val_fraction=0.0, quiet=True),
             DataOptions(), log=lambda text: None)
    assert np.all(np.isfinite(run(onnx.load(tuned), x)))


def test_masked_filters_stay_zero_under_a_budget():
    """A filter a budget zeroed gets no shared kernel (labels -1, W_hat row 0), so the
    refit sees the stream channel the lowering drops; without a budget it is clustered."""
    w = np.random.default_rng(1).standard_normal((16, 8, 3, 3)).astype(np.float32)
    w[3] = 0
    plan = plan_layer(w, KSEOptions(G=4), kept=np.arange(8))
    assert np.all(plan.labels[3] == -1) and np.all(plan.w_hat[3] == 0)
    assert np.any(plan_layer(w, KSEOptions(G=4)).w_hat[3] != 0)


def _calibration(tmp_path) -> str:
    path = tmp_path / "images.npz"
    np.savez(path, x=photo_batch((8, 3, 8, 8), seed=1))
    return str(path)


def _int8_budget(tmp_path, target: float, out_name: str = "b.onnx", choices=None):
    from kse_onnx.options import CalibrationOptions, QuantizeOptions, RefitOptions

    src, out = tmp_path / "m.onnx", tmp_path / out_name
    if not src.exists():
        onnx.save(padded_resnet(width=32, hw=8), src)
    return src, out, optimize(src, out, KSEOptions(G=4), budget=BudgetOptions(target),
                              lower_options=LowerOptions("compact", choices=choices),
                              quantize=QuantizeOptions("int8-static"), refit=RefitOptions("none"),
                              calibration=CalibrationOptions(_calibration(tmp_path)))


def test_int8_budget_times_the_int8_form_and_replays(tmp_path, macs_as_time, monkeypatch):
    """With int8-static, the table times INT8 layers and every whole model timed is the
    QDQ model that is written (the reference: onnxruntime's INT8 of the original); counts
    are aligned to the INT8 block; --choices replays the same bytes without timing."""
    timed, layers = [], []
    measure, layer = search.measure, search.time_layer

    def recording_measure(models, points, providers):
        timed.extend(onnx.load_from_string(m) for k, m in models.items()
                     if k != "original float")  # the float original: a column only
        return measure(models, points, providers)

    def recording_layer(*args):
        layers.append(args[-1])
        return layer(*args)

    monkeypatch.setattr(search, "measure", recording_measure)
    monkeypatch.setattr(search, "time_layer", recording_layer)
    src, out, report = _int8_budget(tmp_path, 0.6)
    budget = report.extra["budget"]
    assert budget["step"] == math.lcm(4, table.INT8_BLOCK) and "int8-static" in budget["timed"]
    assert "first 4 calibration input" in budget["timed"]
    assert budget["reference"] == "onnxruntime's int8-static of the original"
    # the ratio to the float original is stated beside (the stand-in clock: macs)
    assert set(budget["reference_to_float"]) == {"b1t1", "b8t1"}
    assert "of the float original)" in report.table()
    # every table layer timed in INT8 but the stem, which the output keeps in float
    assert layers.count(False) == 1 and layers.count(True) >= 2
    assert timed and all(any(n.op_type == "QuantizeLinear" for n in m.graph.node)
                         for m in timed)
    assert all(k % budget["step"] == 0 for k in budget["kept_counts"].values())
    assert report.extra["int8"]["integer_convs"] > 0
    n_timed = len(timed)
    _, again, replayed = _int8_budget(tmp_path, 0.6, "again.onnx", choices=str(out))
    assert len(timed) == n_timed and "kept channels taken from" in replayed.table()
    assert out.read_bytes() == again.read_bytes()


def test_int8_out_of_reach_names_the_best_ratio(tmp_path, macs_as_time, monkeypatch):
    """An R INT8 cannot reach: one error naming the best measured ratio (forced here by
    the stand-in clock, whatever the machine), nothing written."""
    def slow_smallest(models, points, providers):
        keys = [f"b{b}t{t}" for b, t in points]
        return {**{k: dict.fromkeys(keys, 0.777 if k == "smallest" else 1.0) for k in models},
                **{f"{k} ms": dict.fromkeys(keys, 1.0) for k in models}}

    monkeypatch.setattr(search, "measure", slow_smallest)
    with pytest.raises(OptionError, match=r"best reachable ratio is 0\.777x onnxruntime's "
                                          r"int8-static of the original"):
        _int8_budget(tmp_path, 0.6)
    assert not (tmp_path / "b.onnx").exists()


def test_int8_budget_needs_calibration(tmp_path, macs_as_time):
    from kse_onnx.options import QuantizeOptions

    src = tmp_path / "m.onnx"
    onnx.save(padded_resnet(width=32, hw=8), src)
    with pytest.raises(OptionError, match="--calibration"):
        optimize(src, tmp_path / "b.onnx", budget=BudgetOptions(0.6),
                 lower_options=LowerOptions("compact"), quantize=QuantizeOptions("int8-static"))
    assert not (tmp_path / "b.onnx").exists()


def test_layers_of_one_geometry_are_timed_once(macs_as_time, monkeypatch):
    calls = []
    layer = search.time_layer

    def counting(*args):
        calls.append(args)
        return layer(*args)

    monkeypatch.setattr(search, "time_layer", counting)
    g = {"cin": 8, "cout": 8, "kernel": [3, 3], "attrs": {"pads": [1] * 4}, "hw": [8, 8]}
    cuts = Cuts([], {}, {"a": g, "b": dict(g), "c": {**g, "cin": 16}})
    got = search.measure_table(cuts, [(1, 1)], 4, 17, None)
    assert len(calls) == 2 and got["a"] == got["b"] != got["c"]
    search.measure_table(cuts, [(1, 1)], 4, 17, None, int8=True, float_convs={"a"})
    assert [c[-1] for c in calls[2:]] == [False, True, True]


def test_bracketed_goal_interpolates_between_measured_rounds():
    """The INT8 search's next predicted target: between the best round under R and the
    nearest over it (ResNet-50 INT8 round 0 at batch 1: predicted 0.66, measured 0.87)."""
    smallest, noisy = (0.2, 0.15), (0.66, 0.87)
    goal = search._bracketed_goal([smallest, noisy], 0.6)
    assert goal == pytest.approx(0.2 + (0.59 - 0.15) * 0.46 / 0.72)
    assert search._goal(*noisy, 0.6) < 0 < goal  # the linear correction alone overshoots
    assert search._bracketed_goal([smallest], 0.6) == search._goal(*smallest, 0.6)
    assert search._bracketed_goal([smallest, (0.1, 0.9)], 0.6) == 0.2  # disagreeing pairs


def test_latency_budget_with_a_max_drop(tmp_path, macs_as_time, capsys):
    """``--target-latency R --max-drop D``: the model at R is measured on the held-out
    calibration images; within D it is written with that drop, beyond D one error line
    names the pair reached, and nothing is written."""
    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(padded_resnet(width=16, hw=8), src)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=photo_batch((64, 3, 8, 8), seed=3))
    args = ["optimize", str(src), str(out), "--lowering", "compact", "--target-latency",
            "0.6", "--calibration", str(calibration), "--refit", "none", "--holdout", "0.5",
            "--quiet"]
    assert main([*args, "--max-drop", "100", "--report", str(tmp_path / "r.json")]) == 0
    accuracy = json.loads((tmp_path / "r.json").read_text())["accuracy"]
    assert accuracy["source"] == "held-out calibration images" and accuracy["images"] == 32
    assert 0 < accuracy["points"] <= 100
    out.unlink()
    capsys.readouterr()
    assert main([*args, "--max-drop", f"{accuracy['points'] / 2:g}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "best pair reached is R = 0.6 (measured 0." in err and "nothing written" in err
    assert len(err.splitlines()) == 1 and not out.exists()


@pytest.fixture
def jumping_time(macs_as_time, monkeypatch):
    """Whole-model time that jumps (x1.6 above 0.45 of the multiply-adds, as INT8 layouts
    do, and as ResNet-56 at batch 64 did in float: predicted 0.70, measured 0.88)."""
    fake = search.measure

    def jumping(models, points, providers):
        out = fake(models, points, providers)
        for label, ratios in out.items():
            if not label.endswith(" ms") and label != "reference":
                out[label] = {p: round(r * 1.6, 4) if r > 0.45 else r
                              for p, r in ratios.items()}
        return out

    monkeypatch.setattr(search, "measure", jumping)


def _jump_budget(tmp_path, rounds: int = 4, width: int = 16):
    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(padded_resnet(width=width, hw=8), src)
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                      budget=BudgetOptions(0.6, budget_rounds=rounds))
    assert verify(src, out).exact
    return report.extra["budget"]


def test_a_jump_in_measured_time_converges_from_below(tmp_path, jumping_time):
    """The float search interpolates between the rounds measured under and over R (was:
    the linear correction of the last round alone, which alternated 0.88, 0.06, 0.88,
    0.06 here and kept 0.72 of the mass at 0.29x): no round after the first goes back to
    the smallest model, the most mass measured under R is kept, and it sits one aligned
    step of one span under a set measured over R (nothing left between them)."""
    budget = _jump_budget(tmp_path)
    rounds = budget["measured"]
    smallest = max(budget["smallest_model"]["ratio"].values())
    assert all(max(r["ratio"].values()) > smallest for r in rounds[1:])
    under = [r for r in rounds if max(r["ratio"].values()) <= 0.6]
    assert budget["indicator_mass_kept"] == max(r["indicator_mass_kept"] for r in under)
    assert budget["indicator_mass_kept"] > 0.8
    over = [r["kept_counts"] for r in rounds if max(r["ratio"].values()) > 0.6]
    chosen = budget["kept_counts"]
    assert any(sum(abs(o[k] - chosen[k]) for k in chosen) == 4 for o in over), rounds


def test_a_jump_in_measured_time_is_bisected(tmp_path, jumping_time):
    """One round, measured over R (the jump): the search bisects span by span between
    the smallest model (measured under R) and that round, and keeps the most mass
    measured under R."""
    budget = _jump_budget(tmp_path, rounds=1)
    rounds = budget["measured"]
    assert max(rounds[0]["ratio"].values()) > 0.6
    refined = [r for r in rounds if str(r["round"]).startswith("refine")]
    assert refined, rounds
    under = [r["indicator_mass_kept"] for r in refined if max(r["ratio"].values()) <= 0.6]
    assert under and budget["indicator_mass_kept"] == max(under)
    assert all(max(r["ratio"].values()) <= 0.45 or max(r["ratio"].values()) > 0.6
               for r in rounds)  # the jump: nothing measured in between


def test_rounds_all_under_r_are_bisected_towards_the_whole_model(tmp_path, macs_as_time,
                                                                 monkeypatch):
    """Whole-model time far below the table's prediction (the square of the multiply-add
    ratio; ResNet-56 at batch 64: R = 0.8 asked, 0.653x measured, 14 points lost): with
    no round over R, the whole model (1x) is the upper end of the bisection, so the
    search keeps more mass than its round under R and stays at or under R."""
    fake = search.measure

    def faster(models, points, providers):
        out = fake(models, points, providers)
        for label, ratios in out.items():
            if not label.endswith(" ms") and label != "reference":
                out[label] = {p: round(r * r, 4) for p, r in ratios.items()}
        return out

    monkeypatch.setattr(search, "measure", faster)
    budget = _jump_budget(tmp_path, rounds=1, width=48)
    rounds = budget["measured"]
    assert max(rounds[0]["ratio"].values()) < 0.6 - 2 * search.CLOSE, rounds
    refined = [r for r in rounds if str(r["round"]).startswith("refine")]
    assert refined, rounds
    assert budget["indicator_mass_kept"] > rounds[0]["indicator_mass_kept"], [
        (r["round"], r["ratio"], r["indicator_mass_kept"]) for r in rounds]
    chosen = [r for r in rounds if r["indicator_mass_kept"] == budget["indicator_mass_kept"]]
    assert all(max(r["ratio"].values()) <= 0.6 for r in chosen)


def _misaligned(model_bytes) -> bool:
    """Whether a Conv after the stem reads or writes a channel count off the 8 grid."""
    model = onnx.load_from_string(model_bytes) if isinstance(model_bytes, bytes) else model_bytes
    inferred = onnx.shape_inference.infer_shapes(model)
    channels = {v.name: v.type.tensor_type.shape.dim[1].dim_value
                for v in (*inferred.graph.value_info, *inferred.graph.output)
                if len(v.type.tensor_type.shape.dim) == 4}
    image = model.graph.input[0].name  # the stem reads 3 channels in every candidate
    return any(channels.get(name, 8) % 8 for n in model.graph.node
               if n.op_type == "Conv" and n.input[0] != image
               for name in (n.input[0], n.output[0]))


@pytest.mark.parametrize("penalty, step", [(1.0, 4), (10.0, 8)])
def test_the_step_is_chosen_by_the_reach_of_its_smallest_model(tmp_path, macs_as_time,
                                                                monkeypatch, penalty, step):
    """A clock where a network with any conv channel count off the 8-channel layout runs
    ``penalty`` times slower (onnxruntime's blocked layout at 320x320): the search times
    the smallest model at step 4 and at step 8 side by side and takes step 8 when its
    smallest model is the faster; on multiply-adds alone step 4 reaches further and stays.
    Every kept count is then a multiple of the step (or the span whole)."""
    fake = search.measure

    def layout_clock(models, points, providers):
        out = fake(models, points, providers)
        for label, model in models.items():
            if label != "reference" and _misaligned(model):
                out[label] = {p: round(r * penalty, 4) for p, r in out[label].items()}
        return out

    monkeypatch.setattr(search, "measure", layout_clock)
    budget = _jump_budget(tmp_path, rounds=2, width=32)
    assert budget["layout"]["steps"] == [4, 8] and budget["layout"]["chosen_step"] == step, (
        budget["layout"])
    assert budget["step"] == step
    assert all(c % step == 0 for c in budget["kept_counts"].values()), budget["kept_counts"]


@pytest.mark.parametrize("mode", ["act", "distill"])
def test_budget_then_refit_verifies(tmp_path, macs_as_time, mode):
    """A latency budget that prunes a residual group through a channel Pad, then the
    refit (layer-wise, or distillation of every float weight): verify rebuilds the
    reference from the refitted model and the rewrite is exact."""
    from kse_onnx.options import CalibrationOptions, RefitOptions

    src, out, images = tmp_path / "m.onnx", tmp_path / "b.onnx", tmp_path / "cal.npz"
    onnx.save(padded_resnet(width=16, hw=8), src)
    np.savez(images, x=photo_batch((64, 3, 8, 8)))
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                      budget=BudgetOptions(0.6), calibration=CalibrationOptions(str(images)),
                      refit=RefitOptions(mode, refit_distill_epochs=2))
    assert report.settings["budget_streams"], "the residual group was pruned"
    result = verify(src, out)
    assert result.exact, result.summary()
