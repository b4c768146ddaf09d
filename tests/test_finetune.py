"""Fine-tuning: a tiny run trains, resume continues, NaN stops cleanly, and two torchrun
processes follow the single-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from graphs import conv_stack  # noqa: E402
from kse_onnx.api import optimize  # noqa: E402
from kse_onnx.cli import main  # noqa: E402
from kse_onnx.options import KSEOptions, LowerOptions  # noqa: E402
from optimizing import training  # noqa: E402


@pytest.fixture()
def setup(tmp_path):
    """A random teacher, its KSE-compressed student and 256 random 'images'."""
    teacher, student = tmp_path / "teacher.onnx", tmp_path / "student.onnx"
    onnx.save(conv_stack((3, 16, 24, 24), hw=8), teacher)
    optimize(teacher, student, KSEOptions(G=5, T=1), lower_options=LowerOptions("compact"))
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.standard_normal((256, 3, 8, 8)).astype(np.float32))
    return tmp_path, teacher, student, data


def _args(tmp, teacher, student, data, out, *extra):
    return ["finetune", str(student), str(out), "--teacher", str(teacher), "--data", str(data),
            "--batch", "32", "--threads", "1", "--lr", "0.05", *extra]


def _weights(path):
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def test_distillation_brings_student_closer(setup):
    tmp, teacher, student, data = setup
    out = tmp / "tuned.onnx"
    assert main(_args(tmp, teacher, student, data, out, "--epochs", "3")) == 0
    from kse_onnx.data import load_dataset
    from kse_onnx.evaluate import logits

    x, _ = load_dataset(data)
    t = logits(teacher, x)
    before = np.abs(logits(student, x) - t).mean()
    after = np.abs(logits(out, x) - t).mean()
    assert after < 0.8 * before
    assert [n.op_type for n in onnx.load(out).graph.node] == \
        [n.op_type for n in onnx.load(student).graph.node]


def test_finetune_output_quantized_to_int8(setup, capsys):
    """--quantize on finetune: the trained model is quantized, calibrated on --data."""
    tmp, teacher, student, data = setup
    float_out, int8_out = tmp / "tuned_float.onnx", tmp / "tuned_int8.onnx"
    assert main(_args(tmp, teacher, student, data, float_out)) == 0
    assert main(_args(tmp, teacher, student, data, int8_out, "--quantize", "int8-static")) == 0
    assert "convs run as integer kernels" in capsys.readouterr().out
    ops = {n.op_type for n in onnx.load(int8_out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8_out.stat().st_size < 0.7 * float_out.stat().st_size  # a tiny net: names weigh
    from kse_onnx.data import load_dataset
    from kse_onnx.evaluate import logits

    x, _ = load_dataset(data)
    agree = (logits(int8_out, x).argmax(1) == logits(float_out, x).argmax(1)).mean()
    assert agree > 0.9


def test_quantization_aware_epochs_when_int8_loses(setup, monkeypatch):
    """With labels, INT8 is scored on the held-out split; a loss above the threshold (here
    forced to -1, so any) runs fake-int8 epochs and quantizes again."""
    from kse_onnx.finetune import qat
    from kse_onnx.finetune.train import finetune
    from kse_onnx.options import DataOptions, FinetuneOptions, QuantizeOptions

    tmp, teacher, student, data = setup
    x = np.load(data)["x"]
    labelled = tmp / "labelled.npz"
    np.savez(labelled, x=x, y=np.random.default_rng(1).integers(0, 10, len(x)))
    monkeypatch.setattr(qat, "QAT_THRESHOLD", -1.0)
    out = tmp / "qat.onnx"
    result = finetune(student, out, teacher, training(labelled, student),
                      FinetuneOptions(batch=32, threads=1, lr=0.05, val_fraction=0.25),
                      DataOptions(), log=lambda text: None,
                      quantize=QuantizeOptions("int8-static"))
    info = result["int8"]
    assert "quantization-aware epoch" in info["qat"]
    assert {"val_float", "val_int8"} <= set(info)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)


def test_fake_int8_rounds_forward_and_passes_gradient():
    from kse_onnx.finetune.importer import fake_int8

    w = torch.linspace(-1, 1, 1001, requires_grad=True)
    q = fake_int8(w)
    assert len(torch.unique(q.detach())) <= 256
    assert torch.allclose(q, w, atol=1 / 127.5)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_prefetched_batches_are_the_sequential_ones():
    """The next batch is augmented and its teacher run on a worker thread: the same
    random draws in the same order, so the same bytes as one step after another."""
    from kse_onnx.finetune.epochs import EpochRunner, augment
    from kse_onnx.options import DataOptions, FinetuneOptions

    class Teacher:  # stands for the onnxruntime teacher: a pure function of the batch
        def targets(self, xb):
            return [xb.sum(axis=(1, 2, 3))]

    x = np.random.default_rng(1).standard_normal((40, 2, 6, 6)).astype(np.float32)
    data, train = DataOptions(pad_crop=2, flip=True), np.arange(3, 40)
    runner = EpochRunner(None, None, None, Teacher(), x, None, train,
                         FinetuneOptions(batch=8), data, None, None)
    perm = train[::-1]
    got = list(runner._batches(perm, np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    assert len(got) == runner.steps == 4
    for step, (ids, xb, targets) in enumerate(got):
        want_ids = perm[step * 8:(step + 1) * 8]
        want = augment(x[want_ids], data, rng)
        assert np.array_equal(ids, want_ids) and np.array_equal(xb, want)
        assert np.array_equal(targets[0], want.sum(axis=(1, 2, 3)))


def test_resume_continues_from_checkpoint(setup):
    tmp, teacher, student, data = setup
    full, part = tmp / "full.onnx", tmp / "part.onnx"
    assert main(_args(tmp, teacher, student, data, full, "--epochs", "2")) == 0
    # an interrupted run: only epoch 1's checkpoint exists
    (tmp / "part.onnx.ckpt").mkdir()
    shutil.copy(tmp / "full.onnx.ckpt" / "epoch_001.pt", tmp / "part.onnx.ckpt" / "last.pt")
    assert main(_args(tmp, teacher, student, data, part, "--epochs", "2", "--resume")) == 0
    a, b = _weights(full), _weights(part)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_with_another_optimizer_is_refused(setup, capsys):
    tmp, teacher, student, data = setup
    out = tmp / "out.onnx"
    assert main(_args(tmp, teacher, student, data, out, "--optimizer", "sgd")) == 0
    code = main(_args(tmp, teacher, student, data, out, "--epochs", "2", "--resume",
                      "--optimizer", "adam"))
    err = capsys.readouterr().err
    assert code == 1 and "written with the SGD optimizer, resumed with Adam" in err


def test_nan_loss_stops_and_writes_nothing(setup, capsys):
    """A diverged run (finite data, a huge rate) says so and writes no output that would
    claim to be trained; the finished epochs stay in the checkpoint folder."""
    tmp, teacher, student, data = setup
    out = tmp / "nan.onnx"
    code = main(_args(tmp, teacher, student, data, out, "--epochs", "2", "--lr", "1e6",
                      "--clip-grad", "0", "--val-fraction", "0"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "loss became" in err and "training diverged: lower --lr" in err
    assert "nothing was written" in err and not out.exists()


def test_nan_loss_with_a_held_out_split_keeps_the_input(setup, capsys):
    """With a held-out split a diverged run stops training and writes the best measured
    state: here nothing beat the start, so the input's weights, and says so."""
    tmp, teacher, student, data = setup
    out = tmp / "nan.onnx"
    code = main(_args(tmp, teacher, student, data, out, "--epochs", "2", "--lr", "1e6",
                      "--clip-grad", "0"))
    captured = capsys.readouterr()
    assert code == 0 and "loss became" in captured.err
    assert "wrote the input's weights unchanged" in captured.out
    assert _weights(out).keys() == _weights(student).keys()
    assert all(np.array_equal(_weights(out)[k], v) for k, v in _weights(student).items())


def test_two_processes_match_one(setup):
    tmp, teacher, student, data = setup
    single, double = tmp / "single.onnx", tmp / "double.onnx"
    assert main(_args(tmp, teacher, student, data, single, "--epochs", "1")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "kse_onnx.cli", *_args(tmp, teacher, student, data, double, "--epochs", "1")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = _weights(single), _weights(double)
    changed = [k for k in a if not np.array_equal(a[k], _weights(student).get(k, a[k]))]
    assert changed  # training moved weights
    for k in a:  # same trajectory up to float summation order
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_fashion_mnist_fine_tune_recovers_accuracy(tmp_path):
    """On real data: the trained ResNet-20 compressed at G=4,T=0, one short epoch of
    distillation on 2000 training images beats the untuned model on 1000 test images."""
    from kse_onnx.data import FASHION_MNIST, fashion_mnist
    from kse_onnx.evaluate import evaluate
    from kse_onnx.finetune.train import finetune
    from kse_onnx.options import DataOptions, FinetuneOptions

    teacher = Path(__file__).resolve().parents[1] / "models" / "fmnist_resnet20.onnx"
    assert FASHION_MNIST.exists(), \
        "apt-get install dataset-fashion-mnist (tools/scripts/test.sh does)"
    x, y = fashion_mnist("train")
    train = tmp_path / "train.npz"
    np.savez(train, x=x[:2000], y=y[:2000])
    xt, yt = fashion_mnist("test")
    xt = (xt[:1000].astype(np.float32) / 255.0)[:, None]
    yt = yt[:1000].astype(np.int64)
    student, tuned = tmp_path / "kse.onnx", tmp_path / "tuned.onnx"
    optimize(teacher, student, KSEOptions(G=4, T=0), lower_options=LowerOptions("compact"))
    result = finetune(student, tuned, teacher, training(train, student),
                      FinetuneOptions(epochs=2, batch=64, threads=1, val_fraction=0.0),
                      DataOptions(pad_crop=2, flip=True), log=lambda text: None)
    losses = [r["loss"] for r in result["history"]]
    assert losses[-1] < losses[0]
    before, after = evaluate(student, xt, yt).top1, evaluate(tuned, xt, yt).top1
    assert after > before + 0.02, (before, after)


class _Payload:
    """Pickles to a call of ``os.system``: loading it must not run it."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_checkpoint_is_refused(setup, capsys, monkeypatch):
    tmp, teacher, student, data = setup
    monkeypatch.chdir(tmp)
    (tmp / "out.onnx.ckpt").mkdir()
    torch.save({"module": _Payload()}, tmp / "out.onnx.ckpt" / "last.pt")
    code = main(_args(tmp, teacher, student, data, tmp / "out.onnx", "--resume"))
    assert code == 1 and "refused" in capsys.readouterr().err
    assert not (tmp / "PWNED").exists() and not (tmp / "out.onnx").exists()


def _tampered(state: dict, kind: str):
    """A checkpoint of the wrong structure, of ``kind``."""
    module = dict(state["module"])
    name = sorted(module)[0]
    if kind == "not a dict":
        return list(module.values())
    if kind == "missing field":
        return {k: v for k, v in state.items() if k != "epoch"}
    if kind == "field type":
        return {**state, "epoch": "1"}
    if kind == "other model":
        module[name + "_other"] = module.pop(name)
    elif kind == "shape":
        module[name] = torch.zeros(3, 3)
    elif kind == "nan":
        module[name] = torch.full_like(module[name], float("nan"))
    elif kind == "optimizer":
        optimizer = {"state": {0: {"momentum_buffer": torch.zeros(7)}},
                     "param_groups": state["optimizer"]["param_groups"]}
        return {**state, "optimizer": optimizer}
    return {**state, "module": module}


RESUME_ERRORS = {"not a dict": "not a kse-onnx checkpoint (a list, expected a dict)",
                 "missing field": "field 'epoch' is NoneType",
                 "field type": "field 'epoch' is str",
                 "other model": "written for another model",
                 "shape": "the model has torch.float32",
                 "nan": "holds NaN or infinite values",
                 "optimizer": "optimizer state 'momentum_buffer' has shape [7]"}


def test_resume_refuses_checkpoints_of_the_wrong_structure(setup, capsys):
    """Each tampered checkpoint is a one-line error naming it (after the usual progress
    lines), never torch's state-dict message; no output is written."""
    tmp, teacher, student, data = setup
    first = tmp / "first.onnx"
    assert main(_args(tmp, teacher, student, data, first, "--optimizer", "sgd")) == 0
    state = torch.load(tmp / "first.onnx.ckpt" / "last.pt", weights_only=True)
    capsys.readouterr()
    out = tmp / "out.onnx"
    (tmp / "out.onnx.ckpt").mkdir()
    ckpt = tmp / "out.onnx.ckpt" / "last.pt"
    for kind, words in RESUME_ERRORS.items():
        torch.save(_tampered(state, kind), ckpt)
        code = main(_args(tmp, teacher, student, data, out, "--epochs", "2", "--resume",
                          "--optimizer", "sgd"))
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
        assert code == 1 and err.startswith(f"kse-onnx: error: {ckpt}: "), (kind, err)
        assert words in err, (kind, err)
        assert not out.exists()
