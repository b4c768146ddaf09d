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


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (folder, teacher, KSE-compressed student, training data, check inputs)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("losses")
    data = root / "data.npz"
    np.savez(data, x=photo_batch((4096, 3, 16, 16), seed=1))
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


@pytest.mark.parametrize("loss", ["mse", "features"])
@pytest.mark.parametrize("name", ["detector", "unet"])
def test_one_epoch_halves_the_error(pairs, name, loss, capsys):
    folder, teacher, student, data, check = pairs[name]
    out = folder / f"{loss}.onnx"
    code = main(["finetune", str(student), str(out), "--teacher", str(teacher), "--data",
                 str(data), "--loss", loss, "--batch", "16", "--lr", "0.05", "--threads", "1"])
    assert code == 0
    assert f"loss: {loss} (" in capsys.readouterr().out
    before, after = _error(teacher, student, check), _error(teacher, out, check)
    assert np.isfinite(after) and before > 0.05  # the compression did cost something
    assert after <= 0.5 * before, (before, after)
    tuned, original = onnx.load(out), onnx.load(student)
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in original.graph.node]


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
    assert [line.split(":")[0] for line in err] == ["loss", "epoch 1/2", "epoch 2/2"]
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
