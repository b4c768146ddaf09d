"""Post-training refit: least squares with the codes fixed, residual-aware targets,
block fits, the classifier, verify on refitted models, and bad calibration data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphs import folded_resnet, photo_batch, shuffle_net
from kse_onnx.analysis.plan import plan_layer
from kse_onnx.api import analyse, optimize
from kse_onnx.api import refit as refit_command
from kse_onnx.cli import main
from kse_onnx.errors import KSEError
from kse_onnx.options import (
    CalibrationOptions,
    KSEOptions,
    LowerOptions,
    RefitOptions,
    SelectOptions,
)
from kse_onnx.refit.normal import SharedLayout
from kse_onnx.verify import verify
from optimizing import optimize_graph

torch = pytest.importorskip("torch")
FAST = dict(refit_steps=20, refit_batch=16)
G4 = KSEOptions(G=4)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A folded residual net, its calibration images and a scratch folder."""
    tmp = tmp_path_factory.mktemp("refit")
    src = tmp / "resnet.onnx"
    onnx.save(folded_resnet(width=16, hw=8), src)
    calibration = tmp / "calibration.npz"
    np.savez(calibration, x=photo_batch((48, 3, 8, 8), seed=3))
    return tmp, src, calibration


def test_least_squares_recovers_a_weight_its_codes_can_represent():
    """Targets made by shared kernels under the plan's own codes: the fit finds them."""
    from kse_onnx.refit.layer import SharedConv

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    plan = plan_layer(weight, KSEOptions(G=4))
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    truth = SharedConv(node, plan, rng.standard_normal(16).astype(np.float32), 17)
    truth.kernels = rng.standard_normal(truth.kernels.shape)
    x = torch.from_numpy(rng.standard_normal((32, 8, 6, 6)).astype(np.float32))
    target = truth.forward(x)
    fit = SharedConv(node, plan, None, 17)
    fit.least_squares(x, target, damping=1e-9)
    from kse_onnx.refit.layer import relative_error

    assert relative_error(fit.predict(x), target) < 1e-5
    np.testing.assert_allclose(fit.kernels, truth.kernels, atol=1e-5)
    np.testing.assert_allclose(fit.bias, truth.bias, atol=1e-5)


def test_conjugate_gradients_agree_with_the_exact_solve(monkeypatch):
    from kse_onnx.refit import normal

    rng = np.random.default_rng(1)
    labels = np.stack([rng.integers(0, 4, 12), np.arange(12), np.full(12, -1)], axis=1)
    labels[:4, 0] = np.arange(4)
    layout = SharedLayout.from_labels(labels, np.array([4, 12, 0]))
    eq = normal.NormalEquations(3 * 4, 12)
    x = rng.standard_normal((400, 12))
    eq.add(x, x @ rng.standard_normal((12, 12)) + 0.1 * rng.standard_normal((400, 12)))
    problem = normal.SharedLeastSquares(layout, eq, 4, 1e-9)
    k0, b0 = np.zeros((16, 4)), np.zeros(12)
    exact = problem.solve(k0, b0)
    monkeypatch.setattr(normal, "EXACT_MAX", 0)
    iterative = problem.solve(k0, b0)
    assert exact.solver.startswith("exact") and iterative.solver.startswith("conjugate")
    assert iterative.objective_after == pytest.approx(exact.objective_after, rel=1e-6)
    assert exact.objective_after < exact.objective_before


@pytest.mark.parametrize("sharing, iterations", [("none", 1), ("one kernel per channel", 2)])
def test_the_preconditioner_is_the_inverse_without_sharing(monkeypatch, sharing, iterations):
    """With every filter its own kernels the preconditioner is A's inverse: conjugate
    gradients end in one iteration, at the exact solution (a pruned channel, labels -1,
    is left out of it). With one kernel per input channel it is the inverse up to the
    per-filter biases' coupling: two iterations."""
    from kse_onnx.refit import normal

    rng = np.random.default_rng(2)
    n, c, d = 6, 3, 4
    labels = (np.repeat(np.arange(n)[:, None], c, 1) if sharing == "none"
              else np.zeros((n, c), np.int64))
    labels[:, 2] = -1
    q = np.array([n, n, 0]) if sharing == "none" else np.array([1, 1, 0])
    layout = SharedLayout.from_labels(labels, q)
    eq = normal.NormalEquations(c * d, n)
    x = rng.standard_normal((300, c * d)) + 0.5  # a mean: the bias is coupled to the kernels
    eq.add(x, x @ rng.standard_normal((c * d, n)) + rng.standard_normal((300, n)))
    problem = normal.SharedLeastSquares(layout, eq, d, 1e-12)
    k0, b0 = np.zeros((layout.slots, d)), np.zeros(n)
    exact = problem.solve(k0, b0)
    monkeypatch.setattr(normal, "EXACT_MAX", 0)
    iterative = problem.solve(k0, b0)
    assert iterative.solver == f"conjugate gradients ({iterations} iterations)"
    assert iterative.objective_after == pytest.approx(exact.objective_after, rel=1e-5)


def test_an_after_relu_round_runs_at_most_its_share_of_iterations():
    from kse_onnx.refit.normal import PCG_MAX_ITER, PCG_ROUND_ITER, round_iterations

    assert round_iterations(12_544, 4608) == PCG_ROUND_ITER  # ResNet-50's last 3x3s
    assert round_iterations(50_176, 576) == 50_176 // 576  # ResNet-20's 64-channel 3x3s
    assert round_iterations(10**7, 9) == PCG_MAX_ITER


@pytest.mark.parametrize("mode", ["ls", "act", "block"])
def test_refit_keeps_codes_and_never_increases_an_error(resnet, mode):
    """Each layer's error on the calibration images falls: before the activation with
    ``ls``; after the ReLU with ``act`` and ``block`` where a ReLU follows (their rounds
    trade pre-activation error for it); and each block's joint error."""
    tmp, src, calibration = resnet
    model = onnx.load(src)
    fresh = analyse(model, KSEOptions(G=4), SelectOptions())
    _, _, report = optimize_graph(*resnet[:2], G4, "dense", dst=f"codes_{mode}.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions(mode, **FAST),
        log=lambda line: None)
    refit = report.extra["refit"]
    assert len(refit["layers"]) == sum(p.compressed for p in fresh.plans.values()) >= 4
    assert any(f["target"] == "residual Add" for f in refit["layers"])
    assert refit["held_out"] == 10  # 20% of the 48 images judge every step
    assert {f["error_images"] for f in refit["layers"]} == {38}  # the fitted ones, < 256
    for layer in refit["layers"]:
        assert layer["held_error_after"] <= layer["held_error_before"]
        kept_clustered = layer["solver"].startswith("kept the clustered")
        assert kept_clustered == (layer["held_error_after"] == layer["held_error_before"])
    assert (mode == "ls") == all(f["act_error_after"] is None for f in refit["layers"])
    assert refit["layers"][0]["error_after"] < 0.9 * refit["layers"][0]["error_before"]
    assert refit["layers"][0]["held_error_after"] < 0.9 * refit["layers"][0]["held_error_before"]
    for block in refit["blocks"]:
        assert block["error_after"] <= block["error_before"]
    assert bool(refit["blocks"]) == (mode == "block")
    classifier = refit["classifier"]
    assert classifier["judged_on"] == "held-out images"
    assert classifier["kept"] == (classifier["error_after"] < classifier["error_before"])


def test_a_classifier_that_overfits_is_not_kept(resnet):
    """Fewer fitted images than features: the least-squares classifier fits them
    exactly, and is refused because its error on the held-out images rises (as a real
    MobileNetV2's did: fit error 0, top-1 agreement on other images 0.73 -> 0.56)."""
    from kse_onnx.refit.model import refit_model

    tmp, src, calibration = resnet
    model = onnx.load(src)
    result = analyse(model, KSEOptions(G=4), SelectOptions())
    photos = np.load(calibration)["x"]  # 6 fitted; 42 held out, of another spread
    x = np.concatenate([photos[:6], np.random.default_rng(0).standard_normal(
        (42, *photos.shape[1:])).astype(np.float32)])
    refit = refit_model(model, result.plans, x, RefitOptions("ls"), quiet=True, held=42)
    classifier = refit.to_dict()["classifier"]
    assert classifier["judged_on"] == "held-out images" and not classifier["kept"]
    json.dumps(refit.to_dict())  # what --report writes (a numpy bool was not JSON)
    assert classifier["error_after"] > classifier["error_before"]
    gemm = next(n for n in refit.model.graph.node if n.op_type == "Gemm")
    assert "_kse_refit_" not in gemm.input[1]  # the original weights stay


def test_holdout_split_is_seeded_and_never_takes_every_image():
    from kse_onnx.refit.holdout import fitted_first, holdout_split

    fitted, held = holdout_split(10, 0.2, seed=1)
    assert len(held) == 2 and sorted(np.concatenate([fitted, held])) == list(range(10))
    assert np.array_equal(holdout_split(10, 0.2, seed=1)[1], held)
    assert len(holdout_split(1, 0.5, 0)[1]) == 0 and len(holdout_split(3, 0.99, 0)[0]) == 1
    x = np.arange(40.0).reshape(10, 2, 2)
    before = x.copy()
    with fitted_first(x, 0.2, 1) as (ordered, n_held):
        assert ordered is x  # reordered in place: no second copy of the images
        assert n_held == 2 and np.array_equal(ordered[-2:], before[held])
        assert np.array_equal(ordered[:-2], before[fitted])
    assert np.array_equal(x, before)  # put back
    frozen = before.copy()
    frozen.flags.writeable = False
    with fitted_first(frozen, 0.2, 1) as (ordered, n_held):  # read-only: a copy
        assert ordered is not frozen and np.array_equal(ordered[-2:], before[held])
    with pytest.raises(RuntimeError), fitted_first(x, 0.2, 1):
        raise RuntimeError("the refit failed")
    assert np.array_equal(x, before)  # put back on an error too


def test_refitted_plans_keep_q_distinct_kernels_per_channel(resnet):
    from kse_onnx.refit.model import refit_model

    tmp, src, calibration = resnet
    model = onnx.load(src)
    result = analyse(model, KSEOptions(G=4), SelectOptions())
    before = {name: (p.labels.copy(), [k.copy() for k in p.kernels])
              for name, p in result.plans.items() if p.compressed}
    refit_model(model, result.plans, np.load(calibration)["x"], RefitOptions("ls"),
                log=lambda line: None)
    for name, (labels, kernels) in before.items():
        plan = result.plans[name]
        np.testing.assert_array_equal(plan.labels, labels)
        assert any(not np.array_equal(a, b) for a, b in zip(plan.kernels, kernels, strict=True))
        for ch in range(plan.w_hat.shape[1]):
            distinct = np.unique(plan.w_hat[:, ch].reshape(len(plan.w_hat), -1), axis=0)
            assert len(distinct) == (plan.q[ch] if plan.q[ch] else 1)  # pruned: all zero
            if not plan.q[ch]:
                assert not np.any(plan.w_hat[:, ch])


@pytest.mark.parametrize("lowering", ["dense", "compact", "factored"])
def test_verify_passes_a_refitted_model_and_fails_a_broken_one(resnet, lowering):
    tmp, src, calibration = resnet
    _, out, _ = optimize_graph(*resnet[:2], G4, lowering, dst=f"verify_{lowering}.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("ls", **FAST),
        log=lambda line: None)
    assert verify(src, out).exact
    model = onnx.load(out)
    _break(model, lowering)
    broken = tmp / f"broken_{lowering}.onnx"
    onnx.save(model, broken)
    assert not verify(src, broken).exact


def _break(model: onnx.ModelProto, lowering: str) -> None:
    """Corrupt the first compressed conv the way a wrong rewrite would: ``dense`` gives one
    filter its own copy of a shared kernel, ``compact`` points a code at another kernel,
    ``factored`` adds a kernel response to a filter's channel fusion."""
    import json

    settings = json.loads([p for p in model.metadata_props if p.key == "kse_onnx"][0].value)
    first = sorted(settings["compressed_layers"])[0]
    suffix = {"dense": "_kse_weight", "compact": "_kse_codes", "factored": "_kse_select"}
    init = next(i for i in model.graph.initializer if i.name == first + suffix[lowering])
    values = onnx.numpy_helper.to_array(init).copy()
    if lowering == "factored":
        row = values[0, :, 0, 0]
        row[np.flatnonzero(row == 0)[0]] = 1
    else:  # a filter whose kernel on some channel is shared with another filter
        flat = values.reshape(len(values), values.shape[1], -1)
        n, c = next((n, c) for c in range(flat.shape[1]) for n in range(len(flat))
                    if 1 < len(np.unique(flat[:, c], axis=0)) < len(flat)
                    and (flat[:, c] == flat[n, c]).all(axis=-1).sum() > 1)
        if lowering == "compact":  # point it at another kernel of the codebook
            flat[n, c] = (flat[n, c] + 1) % (values.max() + 1)
        else:
            flat[n, c] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))


def test_refit_is_deterministic(resnet):
    _, a, _ = optimize_graph(*resnet[:2], G4, "dense", dst="det_a.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("block", **FAST),
        log=lambda line: None)
    _, b, _ = optimize_graph(*resnet[:2], G4, "dense", dst="det_b.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("block", **FAST),
        log=lambda line: None)
    assert a.read_bytes() == b.read_bytes()


def test_refit_command_matches_optimize_with_calibration(resnet):
    tmp, src, calibration = resnet
    plain = tmp / "plain.onnx"
    optimize(src, plain, KSEOptions(G=4), lower_options=LowerOptions("compact"))
    _, direct, _ = optimize_graph(*resnet[:2], G4, "compact", dst="direct.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("ls", **FAST),
        log=lambda line: None)
    later = tmp / "later.onnx"
    refit_command(plain, later, src, CalibrationOptions(str(calibration)),
                  RefitOptions("ls", **FAST), log=lambda line: None)
    assert later.read_bytes() == direct.read_bytes()


def test_refit_then_int8_in_one_command(resnet, capsys):
    tmp, src, calibration = resnet
    out = tmp / "int8.onnx"
    assert main(["optimize", str(src), str(out), "--lowering", "compact", "--calibration",
                 str(calibration), "--refit", "ls", "--quantize", "int8-static"]) == 0
    text = capsys.readouterr().out
    assert "refit (ls, 48 calibration images" in text and "int8-static" in text
    result = verify(src, out)
    assert result.quantized and result.approximation[0].top1_agreement is not None


@pytest.mark.parametrize("case", ["channels", "nan", "empty", "missing"])
def test_bad_calibration_data_is_a_clean_error_and_writes_nothing(resnet, case, capsys):
    tmp, src, _ = resnet
    data = tmp / f"bad_{case}.npz"
    x = {"channels": np.zeros((8, 1, 8, 8), np.float32),
         "nan": np.full((8, 3, 8, 8), np.nan, np.float32),
         "empty": np.zeros((0, 3, 8, 8), np.float32)}.get(case)
    if x is not None:
        np.savez(data, x=x)
    out = tmp / f"out_{case}.onnx"
    code = main(["optimize", str(src), str(out), "--calibration", str(data), "--refit", "ls"])
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err


def test_few_images_fall_back_to_damping(resnet):
    """One image gives fewer equations than unknowns for the wide layers: the damped
    solve still returns, and no layer gets worse on that image."""
    tmp, src, calibration = resnet
    one = tmp / "one.npz"
    np.savez(one, x=np.load(calibration)["x"][:1])
    report = optimize(src, tmp / "one.onnx", KSEOptions(G=4), lower_options=LowerOptions("dense"),
                      calibration=CalibrationOptions(str(one)), refit=RefitOptions("ls"),
                      log=lambda line: None)
    for layer in report.extra["refit"]["layers"]:
        assert layer["error_after"] <= layer["error_before"]


def test_refit_options_are_checked():
    for kwargs in ({"refit": "bias"}, {"refit_lr": 0.0}, {"refit_damping": float("nan")},
                   {"refit_batch": 0}):
        with pytest.raises(KSEError):
            RefitOptions(**kwargs)


@pytest.mark.parametrize("builder", ["tiny_detector", "tiny_unet"])
def test_refit_works_on_detectors_and_segmenters(tmp_path, builder):
    """The refit runs every op the importer maps (Split, Resize, ConvTranspose, Sigmoid
    heads...), lowers no layer's error, brings the output closer to the original's than
    the plain compression, and verifies exact. The act rounds run only where a Relu reads
    the Conv, never on a SiLU (Sigmoid * x) or a head (the detector)."""
    import graphs

    src = tmp_path / "model.onnx"
    onnx.save(getattr(graphs, builder)(hw=16), src)
    images = tmp_path / "images.npz"
    np.savez(images, x=photo_batch((32, 3, 16, 16), seed=5))
    out = tmp_path / "refit.onnx"
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                      calibration=CalibrationOptions(str(images)), refit=RefitOptions("act"),
                      log=lambda line: None)
    layers = report.extra["refit"]["layers"]
    assert layers
    for layer in layers:
        worse = (layer["error_after"] > layer["error_before"] * (1 + 1e-6)
                 if layer["act_error_after"] is None
                 else layer["act_error_after"] > layer["act_error_before"] * (1 + 1e-6))
        assert not worse, layer
    if builder == "tiny_detector":  # SiLU and heads: no matching after a Relu
        assert all(layer["act_error_after"] is None for layer in layers)
    assert verify(src, out).exact
    plain = tmp_path / "plain.onnx"
    optimize(src, plain, KSEOptions(G=4), lower_options=LowerOptions("compact"))
    check = tmp_path / "check.npz"
    np.savez(check, x=photo_batch((16, 3, 16, 16), seed=6))
    before = verify(src, plain, inputs=check).approximation[-1].rel_error
    after = verify(src, out, inputs=check).approximation[-1].rel_error
    assert after < 0.8 * before, (before, after)


def test_refit_refuses_an_unknown_operator_by_name(tmp_path, capsys):
    """The refit runs the graph with the fine-tuning importer: an operator it cannot map
    is one error naming it and its node, and nothing is written. Only the nodes the
    fits read are run, and checked: here the first SiLU's Sigmoid, in the backbone (the
    last one, after the head, is never run: tests/test_unbatched.py's NMS)."""
    from graphs import tiny_detector

    model = tiny_detector(hw=16)
    node = [n for n in model.graph.node if n.op_type == "Sigmoid"][0]
    node.op_type, node.domain = "FancySigmoid", "custom.ops"
    model.opset_import.append(onnx.helper.make_opsetid("custom.ops", 1))
    src, out, images = tmp_path / "custom.onnx", tmp_path / "out.onnx", tmp_path / "x.npz"
    onnx.save(model, src)
    np.savez(images, x=photo_batch((8, 3, 16, 16)))
    code = main(["optimize", str(src), str(out), "--lowering", "compact",
                 "--calibration", str(images)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("kse-onnx: error: ") and err.count("\n") == 1
    assert f"custom.ops.FancySigmoid (node '{node.name}')" in err
    assert not out.exists()


def test_float16_holding_for_large_models_fits_as_well(resnet, monkeypatch):
    """Large models hold activations in float16 and run per-image operators in chunks
    (forced here): the fit lands where the float32 one does, and verifies exact."""
    from kse_onnx.onnx_torch import held

    tmp, src, _ = resnet
    _, _, plain = optimize_graph(*resnet[:2], G4, "dense", dst="held32.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("act", **FAST),
        log=lambda line: None)
    monkeypatch.setattr(held, "HALF_FROM_BYTES", 0)
    monkeypatch.setattr(held, "CHUNK", 7)
    _, out, half = optimize_graph(*resnet[:2], G4, "dense", dst="held16.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("act", **FAST),
        log=lambda line: None)
    for a, b in zip(plain.extra["refit"]["layers"], half.extra["refit"]["layers"], strict=True):
        assert b["error_after"] == pytest.approx(a["error_after"], rel=0.02, abs=2e-3)
    assert verify(src, out).exact


def test_refit_command_logs_a_line_per_conv_and_quiet_none(resnet, capsys):
    tmp, src, calibration = resnet
    plain = tmp / "for_quiet.onnx"
    optimize(src, plain, KSEOptions(G=4), lower_options=LowerOptions("compact"))
    args = ["refit", str(plain), str(tmp / "refit_log.onnx"), "--teacher", str(src),
            "--calibration", str(calibration), "--refit", "ls"]
    assert main(args) == 0
    err = capsys.readouterr().err  # not a terminal: one line per compressed conv
    lines = [line for line in err.splitlines() if line.startswith("refit: ")]
    assert lines and "\r" not in err
    assert main([*args[:2], str(tmp / "refit_quiet.onnx"), *args[3:], "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_chunked_sum_equals_the_whole_sum_slice_by_slice():
    """A residual target and its ReLU floor, computed per slice of images, equal the sum
    formed whole, broadcast terms included, and no term is changed."""
    from kse_onnx.refit.layer import ChunkedSum, relative_error

    rng = np.random.default_rng(4)
    a, b, c = (torch.from_numpy(rng.standard_normal((10, 3, 4, 4)).astype(np.float32))
               for _ in range(3))
    bias = torch.from_numpy(rng.standard_normal((1, 3, 1, 1)).astype(np.float32))
    kept = a.clone()
    total = ChunkedSum([(1, a), (1, b.half()), (-1, c), (1, bias)])
    whole = a + b.half().float() - c + bias
    assert len(total) == 10 and total.dim() == 4
    torch.testing.assert_close(torch.cat([total[0:3], total[3:10]]), whole)
    assert torch.equal(a, kept)
    out = whole + 0.1
    assert relative_error(out, total) == pytest.approx(relative_error(out, whole), rel=1e-6)
    floor = ChunkedSum([(-1, c)])
    assert relative_error(out, total, floor) == pytest.approx(
        relative_error(out, whole, -c), rel=1e-6)


def _strided_conv(rng, **attrs):
    """A compressed 3x3 Conv (G=4) with the given attributes and random inputs."""
    from kse_onnx.refit.layer import SharedConv

    weight = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    conv = SharedConv(node, plan_layer(weight, KSEOptions(G=4)),
                      rng.standard_normal(8).astype(np.float32), 17)
    x = torch.from_numpy(rng.standard_normal((5, 6, 9, 11)).astype(np.float32))
    return conv, x


@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2]),
                                   dict(dilations=[2, 1], pads=[2, 0, 1, 1]),
                                   dict(auto_pad="SAME_UPPER", strides=[2, 3])])
def test_patches_at_sampled_positions_are_the_columns_of_all_patches(attrs):
    conv, x = _strided_conv(np.random.default_rng(5), **attrs)
    everything = conv.patches(x)
    ho, wo = conv.forward(x).shape[2:]
    flat = torch.tensor([0, 3, wo + 1, ho * wo - 1, ho * wo, 4 * ho * wo + 2])
    image, where = flat // (ho * wo), flat % (ho * wo)
    at = conv.patches(x, (image, where // wo, where % wo))
    torch.testing.assert_close(at, everything[:, image * ho * wo + where], rtol=0, atol=0)


@pytest.mark.parametrize("relu", [False, True])
def test_sampling_every_position_sums_the_same_normal_equations(relu):
    """The sampled path of the accumulation, given every position, adds what the whole
    path adds: patches, targets and (after a ReLU) the relaxed targets."""
    from kse_onnx.refit.normal import NormalEquations

    conv, x = _strided_conv(np.random.default_rng(6), pads=[1, 1, 1, 1], strides=[2, 1])
    target = conv.forward(x) + 0.3 * torch.randn(conv.forward(x).shape,
                                                 generator=torch.Generator().manual_seed(0))
    floor = torch.full((1, 8, 1, 1), 0.1) if relu else None  # broadcast, as a constant
    sums = []
    for sample in (None, np.arange(target.numel() // target.shape[1])):
        eq = NormalEquations(6 * 9, 8)
        conv._accumulate(eq, x, target, with_gram=True, floor=floor, sample=sample)
        sums.append(eq)
    for name in ("G", "H", "s", "y_sum", "yy", "P"):
        np.testing.assert_allclose(getattr(sums[1], name), getattr(sums[0], name),
                                   rtol=1e-5, atol=1e-4, err_msg=name)


def test_sampled_least_squares_recovers_representable_kernels_deterministically():
    """Exact targets: a quarter of the positions is still enough to find the kernels,
    the same ones for the same seed; another seed draws other positions."""
    from kse_onnx.refit.layer import SharedConv, relative_error, sampled_positions

    rng = np.random.default_rng(7)
    truth, x = _strided_conv(rng, pads=[1, 1, 1, 1])
    truth.kernels = rng.standard_normal(truth.kernels.shape)
    target = truth.forward(x)
    total = target.numel() // target.shape[1]
    fits = []
    for seed in (0, 0):
        fit = SharedConv(truth.node, truth.plan, None, 17)
        fit.least_squares(x, target, damping=1e-9, positions=total // 4, seed=seed)
        assert relative_error(fit.predict(x), target) < 1e-5
        fits.append(fit.kernels)
    np.testing.assert_array_equal(fits[0], fits[1])
    assert len(sampled_positions(total, total // 4, 0)) == total // 4
    assert not np.array_equal(sampled_positions(total, 50, 0), sampled_positions(total, 50, 1))
    assert sampled_positions(total, 0, 0) is None and sampled_positions(total, total, 0) is None


def test_after_relu_rounds_from_their_cache_give_the_same_kernels(monkeypatch):
    """The rounds' cached sampled batches (patches, targets, floors) sum what reading
    the activations again sums: on images that make one batch either way, the kernels
    are equal to the bit, cached or not."""
    from kse_onnx.refit import layer

    rng = np.random.default_rng(8)
    truth, x = _strided_conv(rng, pads=[1, 1, 1, 1])
    target = truth.forward(x) + 0.5 * torch.from_numpy(
        rng.standard_normal(truth.forward(x).shape).astype(np.float32))
    total = target.numel() // target.shape[1]
    kernels, rounds_read = [], []
    for cap in (layer._ROUND_CACHE_BYTES, 0):
        monkeypatch.setattr(layer, "_ROUND_CACHE_BYTES", cap)
        fit = layer.SharedConv(truth.node, truth.plan, None, 17)
        reads = []

        def counted(v, at=None, reads=reads, original=fit.patches):
            reads.append(1)
            return original(v, at)
        monkeypatch.setattr(fit, "patches", counted)
        solution = fit.least_squares(x, target, damping=1e-6, floor=torch.zeros(()),
                                     rounds=4, positions=total // 3, seed=1)
        assert "4 after-ReLU rounds" in solution.solver
        kernels.append(fit.kernels)
        rounds_read.append(len(reads))
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert rounds_read[0] < rounds_read[1]  # cached: rounds 2-4 read no patches


def test_held_out_judge_on_sampled_positions_tracks_the_whole_error(monkeypatch):
    """Past JUDGE_POSITIONS, the held-out error is measured on a sample of positions:
    close to the error over every position, for the first kernels and after a change;
    below it, on every position (count 0) and equal to the whole measurement."""
    from kse_onnx.refit import conv_fit

    rng = np.random.default_rng(9)
    conv, x = _strided_conv(rng, pads=[1, 1, 1, 1])
    target = conv.forward(x) + 0.5 * torch.from_numpy(
        rng.standard_normal(conv.forward(x).shape).astype(np.float32))
    held = [x, target, torch.zeros(())]
    total = target.numel() // target.shape[1]
    judge, count = conv_fit.held_judge(conv, held, seed=0)
    assert count == 0 and judge() == conv.errors(*held)[1]
    monkeypatch.setattr(conv_fit, "JUDGE_POSITIONS", total // 2)
    judge, count = conv_fit.held_judge(conv, held, seed=0)
    assert count == total // 2
    for _ in range(2):
        whole = conv.errors(*held)[1]
        assert np.isfinite(judge()) and abs(judge() - whole) < 0.1 * whole
        conv.kernels = conv.kernels * 1.5  # judged again on the new kernels
    assert conv_fit.held_judge(conv, held, seed=0)[0]() == judge()  # same seed, same sample


def test_a_constant_beside_a_conv_is_not_cut_as_if_it_held_the_images():
    """Add(conv, constant of shape (C, 1, 1)) with as many calibration images as C: the
    constant is the same for every image, not one row per image (it was cut into the
    fitted and held-out images' rows, and broadcast against the wrong axis)."""
    from graphs import GraphBuilder
    from kse_onnx.api import optimize_model

    rng = np.random.default_rng(10)
    b = GraphBuilder(3)
    x = b.relu(b.conv(b.input.name, 3, 10))
    y = b.op("Add", [b.conv(x, 10, 10), b.const(rng.standard_normal((10, 1, 1)).astype(
        np.float32))])
    model = b.model(b.relu(y), shape=("batch", 10, 8, 8))
    images = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    built = optimize_model(model, calibration=images, kse=KSEOptions(G=2),
                           refit=RefitOptions("act"), log=lambda line: None)
    layers = built.report.extra["refit"]["layers"]
    assert [f["target"] for f in layers][-1] == "residual Add"
    assert all(np.isfinite(f["held_error_after"]) for f in layers)


DISTILL = dict(refit_distill_epochs=2, refit_distill_batch=16)


@pytest.mark.parametrize("lowering", ["dense", "compact"])
def test_distill_keeps_sharing_and_pruned_channels_and_verifies(resnet, lowering,
                                                              monkeypatch):
    """``--refit distill`` changes weights, never the structure: the same nodes and
    tensor shapes as the refit alone, the same zero kernels, each compressed Conv still
    ``q`` distinct kernels per channel; verify's reference reads every weight back. On
    this tiny net the ``act`` refit is already so close (held-out KL 0.0004) that no
    epoch beats it, so every epoch is accepted here to write the distilled weights."""
    import kse_onnx.refit.distill as distill_module
    from kse_onnx.finetune.importer import SharedWeight

    monkeypatch.setattr(distill_module, "improves", lambda error, best, start: True)
    tmp, src, calibration = resnet
    _, act, _ = optimize_graph(*resnet[:2], G4, lowering, dst=f"act_{lowering}.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("act", **FAST),
        log=lambda line: None)
    out = tmp / f"distill_{lowering}.onnx"
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions(lowering),
                      calibration=CalibrationOptions(str(calibration)),
                      refit=RefitOptions("distill", refit_distill_lr=1e-3, **DISTILL),
                      log=lambda line: None)
    distilled = report.extra["refit"]["distill"]
    assert distilled["held_out"] == 10 and distilled["kept"] == "epoch 2"
    a, b = onnx.load(act), onnx.load(out)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    before = {i.name: onnx.numpy_helper.to_array(i) for i in a.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in b.graph.initializer}
    assert before.keys() == after.keys()
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert changed
    for name, value in before.items():
        assert value.shape == after[name].shape
        if not np.issubdtype(value.dtype, np.floating):  # codes, indices, shapes
            np.testing.assert_array_equal(value, after[name])
        if name.endswith("_kse_codebook"):  # a stored table: the same zero kernels
            old = SharedWeight(value, is_codebook=True)
            assert torch.equal(old.keep, SharedWeight(after[name], is_codebook=True).keep)
        if name.endswith("_kse_weight"):
            old, new = SharedWeight(value), SharedWeight(after[name])
            # the same sharing: the codes are the same partition (the table's order, by
            # value, may change), and the same kernels are zero (pruned or alignment)
            pairs = set(zip(old.codes.flatten().tolist(), new.codes.flatten().tolist(),
                            strict=True))
            assert len(pairs) == len(set(old.codes.flatten().tolist())) == len(
                set(new.codes.flatten().tolist()))
            assert torch.equal(old.keep.flatten()[old.codes], new.keep.flatten()[new.codes])
    assert verify(src, out).exact


def test_distill_never_returns_a_worse_model(resnet):
    """An absurd learning rate makes every epoch worse on the held-out images: the refit
    alone is written, and the report says so."""
    tmp, src, calibration = resnet
    _, act, _ = optimize_graph(*resnet[:2], G4, "dense", dst="act_plain.onnx",
        calibration=CalibrationOptions(str(resnet[2])), refit=RefitOptions("act", **FAST),
        log=lambda line: None)
    out = tmp / "distill_absurd.onnx"
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("dense"),
                      calibration=CalibrationOptions(str(calibration)),
                      refit=RefitOptions("distill", refit_distill_lr=1e3, **DISTILL),
                      log=lambda line: None)
    distilled = report.extra["refit"]["distill"]
    assert distilled["kept"].startswith("the refit alone")
    assert distilled["held_after"] == distilled["held_before"]
    assert all(h["held_out"] > distilled["held_before"] for h in distilled["history"])
    a, b = onnx.load(act), onnx.load(out)
    for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(x),
                                      onnx.numpy_helper.to_array(y))


def test_distill_is_deterministic(resnet):
    tmp, src, calibration = resnet
    outs = []
    for k in range(2):
        outs.append(tmp / f"distill_det_{k}.onnx")
        optimize(src, outs[-1], KSEOptions(G=4), lower_options=LowerOptions("compact"),
                 calibration=CalibrationOptions(str(calibration)),
                 refit=RefitOptions("distill", **DISTILL), log=lambda line: None)
    assert outs[0].read_bytes() == outs[1].read_bytes()


@pytest.mark.parametrize("mode", ["act", "distill"])
def test_a_fixed_batch_model_is_refitted_that_many_images_at_a_time(tmp_path, mode, capsys):
    """torchvision's ShuffleNet exported without dynamic axes: a Reshape holds the batch
    of 2 its input fixes. The refit, the distillation and the drop measurement run it 2
    images at a time, on the 40 of 41 images that fill whole batches, and it verifies."""
    src, out = tmp_path / "shuffle.onnx", tmp_path / "out.onnx"
    onnx.save(shuffle_net(batch=2), src)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=photo_batch((41, 3, 8, 8), seed=3))
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                      calibration=CalibrationOptions(str(calibration)),
                      refit=RefitOptions(mode, **{**FAST, **DISTILL}))
    assert "40 of 41 calibration images" in capsys.readouterr().err
    assert report.extra["refit"]["images"] == 40
    assert report.extra["accuracy"]["images"] == 40
    assert verify(src, out).exact


def test_distill_rate_falls_with_depth_beyond_the_reference():
    """The distillation's rate is scaled by ``REFERENCE_DEPTH / depth`` for a network
    deeper than the ResNet-20 its default was chosen on (a residual stream adds every
    block's change), never raised for a shallower one; the depth counts weighted layers
    on the longest path, so a shortcut conv beside a block adds nothing."""
    from graphs import GraphBuilder
    from kse_onnx.graph.count import weighted_depth
    from kse_onnx.refit.distill import REFERENCE_DEPTH, depth_scale

    assert weighted_depth(folded_resnet()) == 6  # stem, 2 + 2 block convs, Gemm
    assert depth_scale(folded_resnet()) == (6, 1.0)
    b = GraphBuilder(3, 8, 0)
    x = b.relu(b.conv(b.input.name, 3, 4))
    for _ in range(2 * REFERENCE_DEPTH - 2):
        x = b.op("Add", [x, b.conv(b.relu(x), 4, 4)])  # residual blocks of one conv
    deep = b.model(b.head(x, 4))
    assert depth_scale(deep) == (2 * REFERENCE_DEPTH, 0.5)
