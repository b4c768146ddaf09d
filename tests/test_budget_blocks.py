"""``--budget-blocks``: which residual blocks are removable, their exact removal, the
choice of how many (fewest under R, by the stand-in clock of test_budget), the refit
walking the original past them, replay and verify, and the one-line refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_budget import macs_as_time  # noqa: F401  (the fixture, shared)

from graphs import GraphBuilder, photo_batch
from kse_onnx.api import optimize
from kse_onnx.budget import run as budget_run
from kse_onnx.budget import search
from kse_onnx.budget.depth import choose_blocks
from kse_onnx.cli import main
from kse_onnx.errors import ModelError, OptionError
from kse_onnx.graph.blocks import removable_blocks, remove_blocks
from kse_onnx.options import (
    BudgetOptions,
    CalibrationOptions,
    KSEOptions,
    LowerOptions,
    RefitOptions,
)
from kse_onnx.runtime.ort import session
from kse_onnx.verify import verify


def deep_resnet(blocks: int = 4, width: int = 8, hw: int = 8, seed: int = 0,
                zero_branch: int | None = None, tail: bool = False) -> onnx.ModelProto:
    """Stem, ``blocks`` identity blocks (conv-relu-conv, Add, Relu), with ``tail`` a
    conv to twice the width, head. Block ``zero_branch`` has an all-zero second conv
    (its branch adds nothing)."""
    b = GraphBuilder(3, hw, seed)
    x = b.relu(b.conv(b.input.name, 3, width))
    for i in range(blocks):
        inner = b.relu(b.conv(x, width, width))
        y = b.conv(inner, width, width)
        if i == zero_branch:
            for init in b.inits:
                if init.name in (f"{y}.weight", f"{y}.bias"):
                    init.CopyFrom(onnx.numpy_helper.from_array(
                        np.zeros_like(onnx.numpy_helper.to_array(init)), init.name))
        x = b.relu(b.op("Add", [x, y]))
    if tail:
        x = b.relu(b.conv(x, width, 2 * width))
    return b.model(b.head(x, 2 * width if tail else width))


def run(model, x):
    sess = session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture
def clock(macs_as_time, monkeypatch):  # noqa: F811
    """The stand-in clock of test_budget, for the blocks' measurements too."""
    monkeypatch.setattr(budget_run, "measure", search.measure)


def test_identity_blocks_are_removable_and_removal_is_exact_for_a_zero_branch():
    model = deep_resnet(zero_branch=2)
    blocks = removable_blocks(model)
    assert len(blocks) == 4
    assert all(len(b.convs) == 2 for b in blocks)
    third = blocks[2]
    x = photo_batch((2, 3, 8, 8))
    without = remove_blocks(model, [third.name])
    onnx.checker.check_model(without, full_check=True)
    assert len(without.graph.node) == len(model.graph.node) - 5  # conv relu conv add relu
    np.testing.assert_array_equal(run(model, x), run(without, x))
    other = remove_blocks(model, [blocks[0].name])  # a branch that adds something
    assert not np.allclose(run(model, x), run(other, x))
    with pytest.raises(ValueError, match="not a removable residual block"):
        remove_blocks(model, ["/nowhere/Add"])


def test_what_is_not_a_removable_block():
    """A downsampling shortcut (not the branch's input), a Relu after the Add whose
    shortcut is not a Relu's output (Relu(x) would stay), and a branch tensor read
    outside the block."""
    b = GraphBuilder(3, 8, 0)
    stem = b.conv(b.input.name, 3, 8)  # no Relu: x may be negative
    y = b.conv(b.relu(b.conv(stem, 8, 8)), 8, 8)
    x = b.relu(b.op("Add", [stem, y]))
    inner = b.relu(b.conv(x, 8, 8))
    y = b.conv(inner, 8, 8)
    x = b.relu(b.op("Add", [x, y]))
    x = b.op("Add", [x, inner])  # the second block's branch is read outside it
    down = b.conv(b.relu(b.conv(x, 8, 8, stride=2)), 8, 8)
    pooled = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Add", [pooled, down])
    model = b.model(b.head(x, 8))
    assert removable_blocks(model) == []


def test_choose_blocks_takes_the_fewest_under_r_least_score_first():
    scores = {f"b{i}": {"error": e, "macs_share": 0.2, "score": e / 0.2}
              for i, e in enumerate([0.5, 0.1, 0.3, 0.2, 0.4])}
    calls = []

    def measure(names):
        calls.append(list(names))
        return {"b1t1": 1.0 - 0.15 * len(names)}

    depth = choose_blocks(scores, 0.6, measure)
    assert depth.removed == ["b1", "b3", "b2"]  # 1 - 0.45 = 0.55 <= 0.6; two give 0.7
    assert depth.ratio == {"b1t1": pytest.approx(0.55)}
    assert calls[0] == ["b1", "b3", "b2", "b4", "b0"]  # every block first
    short = choose_blocks(scores, 0.2, measure)  # out of reach by blocks alone
    assert short.removed == ["b1", "b3", "b2", "b4", "b0"] and len(short.rounds) == 1


def _images(tmp_path, n: int = 32) -> str:
    path = tmp_path / "images.npz"
    np.savez(path, x=photo_batch((n, 3, 8, 8), seed=1))
    return str(path)


@pytest.mark.parametrize("mode", ["act", "distill"])
def test_blocks_removed_refitted_replayed_and_verified(tmp_path, clock, mode):
    """R = 0.8 of the multiply-adds: one of four blocks goes (each is 0.24 of them);
    the written model lacks its nodes, records it, verifies exact against the original
    without it, replays byte for byte, and the same run gives the same bytes."""
    src, out, again = tmp_path / "m.onnx", tmp_path / "b.onnx", tmp_path / "again.onnx"
    onnx.save(deep_resnet(), src)
    calibration = CalibrationOptions(_images(tmp_path))
    options = dict(lower_options=LowerOptions("compact", batches="1,8"),
                   budget=BudgetOptions(0.8, budget_blocks=True), calibration=calibration,
                   refit=RefitOptions(mode, refit_distill_epochs=2))
    report = optimize(src, out, KSEOptions(G=4), **options)
    budget = report.extra["budget"]
    removed = budget["blocks"]["removed"]
    assert len(removed) == 1 and report.settings["removed_blocks"] == removed
    assert max(budget["measured"][0]["ratio"].values()) <= 0.8
    assert budget["kept_counts"] == {}, "the blocks reached R: no channel cut"
    written = onnx.load(out)
    names = {n.name for n in written.graph.node}
    assert removed[0] not in names
    assert len([n for n in written.graph.node if n.op_type == "Add"]) == 3
    assert verify(src, out).exact
    optimize(src, again, KSEOptions(G=4), **options)
    assert again.read_bytes() == out.read_bytes()
    replay = dict(options, lower_options=LowerOptions("compact", choices=str(out)))
    third = tmp_path / "third.onnx"
    optimize(src, third, KSEOptions(G=4), **replay)
    assert third.read_bytes() == out.read_bytes()
    fourth = tmp_path / "fourth.onnx"  # the record, not the flag, says what was removed
    optimize(src, fourth, KSEOptions(G=4), **dict(replay, budget=BudgetOptions(0.8)))
    assert fourth.read_bytes() == out.read_bytes()
    if mode == "act":
        with pytest.raises(OptionError, match="--refit: block cannot refit"):
            optimize(src, tmp_path / "fifth.onnx", KSEOptions(G=4),
                     **dict(replay, refit=RefitOptions("block"), budget=BudgetOptions(0.8)))
        assert not (tmp_path / "fifth.onnx").exists()
    if mode == "act":  # refit of the written model: the same record, the same blocks
        from kse_onnx.api import refit

        refitted = tmp_path / "refit.onnx"
        refit(out, refitted, src, calibration, options["refit"])
        assert refitted.read_bytes() == out.read_bytes()


def test_the_refit_walks_the_original_past_a_removed_block(tmp_path, clock):
    """The student skips the block, the teacher runs it: the layers after it are fitted
    to the original's values, so the written model is closer to the original than the
    same blocks removed with the refit fitted to the model without them."""
    src = tmp_path / "m.onnx"
    onnx.save(deep_resnet(), src)
    images = _images(tmp_path, 64)
    report = optimize(src, tmp_path / "b.onnx", KSEOptions(G=4),
                      lower_options=LowerOptions("compact"),
                      budget=BudgetOptions(0.8, budget_blocks=True),
                      calibration=CalibrationOptions(images), refit=RefitOptions("ls"))
    removed = report.extra["budget"]["blocks"]["removed"]
    shallow = tmp_path / "shallow.onnx"
    onnx.save(remove_blocks(onnx.load(src), removed), shallow)
    alone = optimize(shallow, tmp_path / "alone.onnx", KSEOptions(G=4),
                     lower_options=LowerOptions("compact"),
                     calibration=CalibrationOptions(images), refit=RefitOptions("ls"))
    x = photo_batch((64, 3, 8, 8), seed=7)
    want = run(onnx.load(src), x)

    def error(path):
        return float(np.linalg.norm(run(onnx.load(path), x) - want) / np.linalg.norm(want))

    assert alone.extra.get("budget") is None
    assert error(tmp_path / "b.onnx") < error(tmp_path / "alone.onnx")


def test_blocks_then_channels_when_blocks_alone_do_not_reach(tmp_path, clock):
    """Every block removed leaves 0.23 of the multiply-adds (stem and tail conv); R =
    0.15 then needs the tail conv's input channels cut too."""
    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(deep_resnet(tail=True), src)
    report = optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
                      budget=BudgetOptions(0.15, budget_blocks=True),
                      calibration=CalibrationOptions(_images(tmp_path)))
    budget = report.extra["budget"]
    assert len(budget["blocks"]["removed"]) == 4
    assert budget["kept_counts"] and isinstance(budget["channels"], dict)
    assert max(budget["measured"][0]["ratio"].values()) <= 0.15
    assert verify(src, out).exact


def test_out_of_reach_with_blocks_names_both_steps(tmp_path, clock):
    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(deep_resnet(tail=True), src)
    with pytest.raises(OptionError, match=r"0\.01 is out of reach: every removable block "
                                          r"removed \(4\) measured 0\.2\d+x the original"):
        optimize(src, out, lower_options=LowerOptions("compact"),
                 budget=BudgetOptions(0.01, budget_blocks=True),
                 calibration=CalibrationOptions(_images(tmp_path)))
    assert not out.exists()


def test_refusals_are_one_line_and_write_nothing(tmp_path, clock, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(deep_resnet(), src)
    images = _images(tmp_path)
    base = ["optimize", str(src), str(out), "--target-latency", "0.75", "--budget-blocks"]
    for extra, flag in (([], "--budget-blocks"),
                        (["--calibration", images, "--refit", "block"], "--budget-blocks")):
        code = main(base + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and flag in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    plain = tmp_path / "plain.onnx"
    b = GraphBuilder(3, 8, 0)
    onnx.save(b.model(b.head(b.relu(b.conv(b.input.name, 3, 8)), 8)), plain)
    with pytest.raises(ModelError, match="no removable residual block"):
        optimize(plain, out, lower_options=LowerOptions("compact"),
                 budget=BudgetOptions(0.8, budget_blocks=True),
                 calibration=CalibrationOptions(images))
    assert not out.exists()
    with pytest.raises(OptionError, match="--budget-blocks"):
        BudgetOptions(0.5, budget_blocks="yes")
    code = main(["optimize", str(src), str(out), "--budget-blocks", "--calibration", images])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--budget-blocks: needs --target-latency" in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_crafted_block_record_is_refused_in_one_line(tmp_path, clock, capsys):
    """A model whose recorded ``removed_blocks`` names no removable block: --choices and
    verify refuse it naming the field or the block; nothing is written."""
    from kse_onnx.graph.export import record_settings, settings_of

    src, out = tmp_path / "m.onnx", tmp_path / "b.onnx"
    onnx.save(deep_resnet(), src)
    optimize(src, out, KSEOptions(G=4), lower_options=LowerOptions("compact"),
             budget=BudgetOptions(0.8, budget_blocks=True),
             calibration=CalibrationOptions(_images(tmp_path)))
    crafted = onnx.load(out)
    settings = settings_of(crafted)
    record_settings(crafted, type(settings)(**{**settings.__dict__,
                                               "removed_blocks": ["conv2"]}))
    onnx.save(crafted, tmp_path / "crafted.onnx")
    again = tmp_path / "again.onnx"
    capsys.readouterr()  # the first optimize's log
    code = main(["optimize", str(src), str(again), "--target-latency", "0.8",
                 "--choices", str(tmp_path / "crafted.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "'conv2' is not a removable residual block" in err, err
    assert len(err.splitlines()) == 1 and not again.exists()
    with pytest.raises(ModelError, match="recorded removed blocks refused"):
        verify(src, tmp_path / "crafted.onnx")


def test_blocks_that_cannot_become_y_equals_x_are_not_offered():
    """A broadcasting Add (x has one channel, the branch eight), an Add whose output is a
    graph output, and a block whose Relu has no name are not removable; an unnamed
    Constant read only by a removed branch goes with it."""
    b = GraphBuilder(3, 8, 0)
    x = b.relu(b.conv(b.input.name, 3, 1))
    y = b.conv(b.relu(b.conv(x, 1, 8)), 8, 8)
    broadcast = b.model(b.head(b.relu(b.op("Add", [x, y])), 8))
    assert removable_blocks(broadcast) == []
    model = deep_resnet(blocks=2)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(
        add.output[0], onnx.TensorProto.FLOAT, None))
    assert add.name not in {blk.name for blk in removable_blocks(exposed)}
    unnamed = onnx.ModelProto()
    unnamed.CopyFrom(model)
    relu = next(n for n in unnamed.graph.node
                if n.op_type == "Relu" and n.input[0] == add.output[0])
    relu.name = ""
    assert add.name not in {blk.name for blk in removable_blocks(unnamed)}
    assert len(removable_blocks(model)) == 2


def test_a_constant_read_only_by_a_removed_branch_goes_with_it():
    model = deep_resnet(blocks=2)
    first = removable_blocks(model)[0]
    conv = next(n for n in model.graph.node if n.name == first.convs[1])
    bias = next(i for i in model.graph.initializer if i.name == conv.input[2])
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], [bias.name],
                                                     value=bias))
    model.graph.initializer.remove(bias)
    without = remove_blocks(model, [first.name])
    assert not any(n.op_type == "Constant" for n in without.graph.node)
    onnx.checker.check_model(without, full_check=True)
    x = photo_batch((2, 3, 8, 8))
    assert run(without, x).shape == run(model, x).shape
