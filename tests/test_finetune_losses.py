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
from kse_onnx.api import optimize  # noqa: E402
from kse_onnx.cli import main  # noqa: E402
from kse_onnx.errors import ModelError  # noqa: E402
from kse_onnx.finetune import progress  # noqa: E402
from kse_onnx.finetune.train import finetune  # noqa: E402
from kse_onnx.options import DataOptions, FinetuneOptions, KSEOptions, LowerOptions  # noqa: E402
from kse_onnx.verify import verify  # noqa: E402

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
    result = finetune(student, tmp_path / "out.onnx", teacher, data,
                      FinetuneOptions(batch=16, threads=1), DataOptions(), log=lines.append)
    assert result["loss"].startswith(picked + " ")
    assert any(line.startswith(f"loss: {picked} (") and "(auto:" in line for line in lines)
    optimizer = "sgd, lr 0.01" if picked == "kd" else "adam, lr 0.003"
    assert f"optimizer: {optimizer} (cosine) (auto: loss {picked})" in lines


def test_optimizer_and_lr_as_given(tmp_path, pairs):
    teacher, student, data = _small(tmp_path, pairs, "unet")
    lines = []
    finetune(student, tmp_path / "out.onnx", teacher, data,
             FinetuneOptions(batch=16, threads=1, optimizer="sgd", lr=0.02, loss="features"),
             DataOptions(), log=lines.append)
    assert "optimizer: sgd, lr 0.02 (cosine)" in lines
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
        finetune(student, tmp_path / "out.onnx", teacher, data,
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
    assert [line.split(":")[0] for line in err] == ["loss", "optimizer", "epoch 1/2",
                                                    "epoch 2/2"]
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
