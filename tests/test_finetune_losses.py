"""finetune --loss: mse and features bring a compressed detector and U-Net at least twice
closer to their teacher in one epoch (error measured as verify --inputs does); auto picks
kd for logits and mse otherwise; unmappable operators stop before training; progress
output follows --quiet and the terminal."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from graphs import conv_stack, photo_batch, tiny_detector, tiny_unet  # noqa: E402
from kse_onnx import progress  # noqa: E402
from kse_onnx.api import optimize  # noqa: E402
from kse_onnx.cli import main  # noqa: E402
from kse_onnx.errors import ModelError  # noqa: E402
from kse_onnx.finetune.train import finetune  # noqa: E402
from kse_onnx.options import (  # noqa: E402
    DEFAULT_LR,
    DataOptions,
    FinetuneOptions,
    KSEOptions,
    LowerOptions,
)
from kse_onnx.verify import verify  # noqa: E402
from optimizing import training  # noqa: E402

MAKERS = {"detector": tiny_detector, "unet": tiny_unet, "classifier": conv_stack}


TRAIN, BATCH = 1024, 16  # 64 steps: seconds per run


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (folder, teacher, KSE-compressed student, training data, check inputs)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("losses")
    data = root / "data.npz"
    np.savez(data, x=photo_batch((TRAIN, 3, 16, 16), seed=1))
    check = root / "check.npz"
    np.savez(check, x=photo_batch((32, 3, 16, 16), seed=2))
    out = {}
    for name, make in MAKERS.items():
        folder = root / name
        folder.mkdir()
        teacher, student = folder / "teacher.onnx", folder / "student.onnx"
        onnx.save(make(hw=16), teacher)
        optimize(teacher, student, KSEOptions(G=4, T=0), lower_options=LowerOptions("compact"))
        out[name] = folder, teacher, student, data, check
    return out


def _error(teacher, model, check) -> float:
    return verify(teacher, model, inputs=check).approximation[-1].rel_error


def _tune(pairs, name, *extra):
    """(error before, error after) one epoch of finetune with the default settings."""
    folder, teacher, student, data, check = pairs[name]
    out = folder / f"tuned{len(list(folder.glob('tuned*.onnx')))}.onnx"
    code = main(["finetune", str(student), str(out), "--teacher", str(teacher), "--data",
                 str(data), "--batch", str(BATCH), "--threads", "1", "--quiet", *extra])
    assert code == 0
    tuned, original = onnx.load(out), onnx.load(student)
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in original.graph.node]
    return _error(teacher, student, check), _error(teacher, out, check)


@pytest.mark.parametrize("loss", ["mse", "features"])
@pytest.mark.parametrize("name", ["detector", "unet"])
def test_one_epoch_halves_the_error(pairs, name, loss):
    before, after = _tune(pairs, name, "--loss", loss)
    assert np.isfinite(after) and before > 0.05  # the compression did cost something
    assert after <= 0.5 * before, (before, after)


def test_halving_is_not_a_given(pairs):
    """The measure can fail: a step too small to move the weights leaves the error."""
    before, after = _tune(pairs, "detector", "--loss", "mse", "--lr", "1e-7")
    assert after > 0.95 * before, (before, after)


def _small(tmp_path, pairs, name):
    folder, teacher, student, _, _ = pairs[name]
    data = tmp_path / "small.npz"
    np.savez(data, x=photo_batch((32, 3, 16, 16)))
    return teacher, student, data


@pytest.mark.parametrize("name,picked", [("classifier", "kd"), ("unet", "mse"),
                                         ("detector", "mse")])
def test_auto_picks_and_says(tmp_path, pairs, name, picked):
    teacher, student, data = _small(tmp_path, pairs, name)
    lines = []
    result = finetune(student, tmp_path / "out.onnx", teacher, training(data, student),
                      FinetuneOptions(batch=16, threads=1), DataOptions(), log=lines.append)
    assert result["loss"].startswith(picked + " ")
    assert any(line.startswith(f"loss: {picked} (") and "(auto:" in line for line in lines)
    optimizer = "sgd, lr 0.01" if picked == "kd" else f"adam, lr {DEFAULT_LR['adam']:g}"
    assert f"optimizer: {optimizer} (cosine), batch 16 (auto: loss {picked})" in lines


def test_optimizer_and_lr_as_given(tmp_path, pairs):
    teacher, student, data = _small(tmp_path, pairs, "unet")
    lines = []
    finetune(student, tmp_path / "out.onnx", teacher, training(data, student),
             FinetuneOptions(batch=16, threads=1, optimizer="sgd", lr=0.02, loss="features"),
             DataOptions(), log=lines.append)
    assert "optimizer: sgd, lr 0.02 (cosine), batch 16" in lines
    assert any(line.startswith("loss: features (") and "and 1 output(s)" in line
               for line in lines)


def test_features_match_the_outputs_too(tmp_path, pairs):
    """--loss features: the compressed Convs' outputs and the graph outputs, each term
    normalised by its teacher variance; zero when the student is the teacher."""
    from kse_onnx.finetune import losses
    from kse_onnx.finetune.importer import import_model

    teacher, student, data = _small(tmp_path, pairs, "detector")
    x = np.load(data)["x"]
    opts = FinetuneOptions(loss="features")
    module = import_model(student)
    objective = losses.plan(opts, onnx.load(student), onnx.load(teacher), module, x,
                            lambda text: None)
    assert objective.outputs == [o.name for o in onnx.load(teacher).graph.output]
    assert objective.features and not set(objective.features) & set(objective.outputs)
    assert len(objective.variances) == len(objective.outputs) + len(objective.features)
    batch = torch.from_numpy(x[:4])
    targets = objective.targets(x[:4])
    loss = objective.loss(module, module, batch, targets, None).item()
    assert loss > 0
    # the output term alone: the features' targets replaced by the student's own values
    k = len(objective.outputs)
    own = [module.captured[n].detach().numpy() for n in objective.features]
    half = objective.loss(module, module, batch, targets[:k] + own, None).item()
    mse = losses.Objective("mse", opts, objective.outputs, variances=objective.variances[:k])
    assert half == pytest.approx(0.5 * mse.loss(module, module, batch, targets[:k],
                                                  None).item(), rel=1e-5)


def test_kd_refused_for_masks(tmp_path, pairs):
    teacher, student, data = _small(tmp_path, pairs, "unet")
    with pytest.raises(ModelError, match="--loss kd needs one 2-D logits output"):
        finetune(student, tmp_path / "out.onnx", teacher, training(data, student),
                 FinetuneOptions(batch=16, threads=1, loss="kd"), DataOptions(),
                 log=lambda text: None)


def test_unknown_operator_stops_before_training(tmp_path, pairs, capsys):
    teacher, student, data = _small(tmp_path, pairs, "detector")
    model = onnx.load(student)
    node = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    node.op_type, node.domain = "FancySigmoid", "custom.ops"
    model.opset_import.append(onnx.helper.make_opsetid("custom.ops", 1))
    broken, out = tmp_path / "broken.onnx", tmp_path / "out.onnx"
    onnx.save(model, broken)
    code = main(["finetune", str(broken), str(out), "--teacher", str(teacher), "--data",
                 str(data), "--batch", "16", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("kse-onnx: error: ") and err.count("\n") == 1
    assert f"custom.ops.FancySigmoid (node '{node.name}')" in err
    assert not out.exists() and not (tmp_path / "out.onnx.ckpt").exists()


def test_log_lines_per_epoch_and_quiet(tmp_path, pairs, capsys):
    teacher, student, data = _small(tmp_path, pairs, "detector")
    args = ["finetune", str(student), str(tmp_path / "o.onnx"), "--teacher", str(teacher),
            "--data", str(data), "--batch", "8", "--threads", "1", "--epochs", "2"]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()  # not a terminal: one line per epoch
    assert [line.split(":")[0] for line in err[:5]] == [
        "loss", "optimizer", "held-out error (3 images) at the start", "epoch 1/2",
        "epoch 2/2"]
    assert len(err) == 6 and err[5].startswith(("kept epoch ", "no epoch beat the input"))
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal():
    stream = _Terminal()
    bar = progress.bar(64, "epoch 1", stream=stream, mininterval=0)
    for _ in range(4):
        bar.update(16, loss="0.5")
    bar.close()
    text = stream.getvalue()
    assert "epoch 1" in text and "img/s" in text and "loss=0.5" in text and "64/64" in text
    silent = _Terminal()
    progress.bar(64, "epoch 1", quiet=True, stream=silent).update(16)
    assert silent.getvalue() == ""
    assert not progress.interactive(io.StringIO())


def test_channel_normalisation_weighs_a_narrow_channel_like_a_wide_one():
    """mse: each channel's squared error over its own teacher variance. The same error
    relative to a channel's spread costs the same in a channel of 1/100 the spread;
    divided by one variance for the whole tensor, the narrow channel's would be ~1e-4 of
    it. A constant channel is divided by the floor, not by zero."""
    from kse_onnx.finetune import losses

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 4, 4)).astype(np.float32)
    scale = np.array([1.0, 1e-2, 0.0], np.float32)[None, :, None, None]
    objective = losses.Objective("mse", FinetuneOptions(loss="mse"), ["y"],
                                 teacher=lambda v: [v * scale + 5.0])  # a Teacher stand-in
    var = losses.channel_variances(objective, x, 0)[0].numpy()
    want = (x * scale).var(axis=(0, 2, 3))
    assert var[:2] == pytest.approx(want[:2], rel=1e-4)
    assert var[2] == pytest.approx(losses.FLOOR * want.mean(), rel=1e-4)  # constant: floored
    objective.variances = [torch.from_numpy(var)]
    target = objective.targets(x)[0]
    noise = 0.1 * rng.standard_normal(target.shape).astype(np.float32)

    def cost(channel):
        s = target.copy()
        s[:, channel] += noise[:, channel] * np.sqrt(var[channel])
        return losses.normalised([torch.from_numpy(s)], [torch.from_numpy(target)],
                                 objective.variances).item()

    wide, narrow = cost(0), cost(1)
    assert wide > 0 and narrow == pytest.approx(wide, rel=0.2)
    assert cost(2) == pytest.approx(wide, rel=0.2)  # the floor, not a zero division
    # one variance for the whole tensor would weigh the two by their raw squared errors
    assert narrow * var[1] < 1e-3 * wide * var[0]


def test_absurd_lr_writes_the_input_unchanged_and_says_so(tmp_path, pairs, capsys):
    """No epoch beats the start on the held-out split: the input's weights are written,
    the run says so, and the held-out error is the input's."""
    folder, teacher, student, data, check = pairs["unet"]
    out = tmp_path / "out.onnx"
    code = main(["finetune", str(student), str(out), "--teacher", str(teacher), "--data",
                 str(data), "--batch", "64", "--threads", "1", "--epochs", "2",
                 "--loss", "mse", "--lr", "0.3", "--warmup", "0", "--lr-check", "0"])
    assert code == 0
    captured = capsys.readouterr()
    assert "wrote the input's weights unchanged" in captured.out
    assert "no epoch beat the input on the held-out split" in captured.err
    epochs = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    start = float(next(line for line in captured.err.splitlines()
                       if "at the start" in line).split(": ")[-1])
    assert len(epochs) == 2 or "loss became" in captured.err  # finite, or stopped
    assert all(float(e.split()[-1]) > start for e in epochs)
    got = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
    want = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(student).graph.initializer}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    assert _error(teacher, out, check) == _error(teacher, student, check)


def test_lr_check_backs_off_an_absurd_rate(tmp_path, pairs):
    """The same absurd rate with the one-batch check: it is divided by 3 until two steps
    lower the first batch's loss, says so, and the run then beats the start."""
    _, teacher, student, data, _ = pairs["unet"]
    lines = []
    result = finetune(student, tmp_path / "out.onnx", teacher, training(data, student),
                      FinetuneOptions(batch=64, threads=1, epochs=1, loss="mse", lr=3.0,
                                      warmup=0.0), DataOptions(), log=lines.append)
    check = next(line for line in lines if line.startswith("lr check: 2 step(s)"))
    chosen = float(check.rsplit("lr ", 1)[1])
    assert chosen < 3.0 and f"{chosen:g}: " in check and "3: " in check
    assert not result["kept_input"]
    assert result["held_out"]["best"] < result["held_out"]["start"]


def test_best_epoch_is_kept_and_reported(tmp_path, pairs):
    """A sane run keeps an epoch that beats the start, and the result names it."""
    teacher, student, data = _small(tmp_path, pairs, "detector")
    result = finetune(student, tmp_path / "out.onnx", teacher, training(data, student),
                      FinetuneOptions(batch=8, threads=1, epochs=2, loss="mse"),
                      DataOptions(), log=lambda text: None)
    held = result["held_out"]
    assert held["measure"] == "error" and not result["kept_input"]
    assert held["best"] < held["start"] and held["best_epoch"] in (1, 2)
    assert held["best"] == min(r["val_error"] for r in result["history"])


def test_warmup_rises_linearly_then_follows_the_schedule():
    from kse_onnx.finetune.train import learning_rate

    opts = FinetuneOptions(warmup=0.1, schedule="constant")
    assert [learning_rate(opts, 1.0, s, 100) for s in (0, 4, 9, 10, 99)] == \
        pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0])
    cosine = FinetuneOptions(warmup=0.0)
    assert learning_rate(cosine, 1.0, 0, 100) == 1.0
