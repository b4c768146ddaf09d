"""The command line: each command end to end, and one-line errors with exit codes."""

from __future__ import annotations

import json

import onnx
import pytest

from graphs import conv_stack, residual_net
from kse_onnx.cli import main


@pytest.fixture()
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(residual_net(32), path)
    return path


def test_score_prints_table_and_json(model_path, tmp_path, capsys):
    out_json = tmp_path / "score.json"
    assert main(["score", str(model_path), "--G", "5", "--T", "1", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "conv3" in text and "first conv (reads a graph input)" in text
    data = json.loads(out_json.read_text())
    assert data["settings"]["G"] == 5
    layer = next(x for x in data["layers"] if x["name"] == "conv3")
    assert layer["status"] == "compressed"
    assert sum(layer["channels_per_level"]) == 32
    assert layer["macs_factored"] < layer["macs_before"]


def test_optimize_then_verify(model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    assert main(["optimize", str(model_path), str(out), "--lowering", "compact",
                 "--report", str(report), "--skip", "conv2*"]) == 0
    data = json.loads(report.read_text())
    assert {x["name"]: x["reason"] for x in data["layers"]}["conv25"] == "matched by --skip"
    assert data["file_size_after"] < data["file_size_before"]
    capsys.readouterr()
    assert main(["verify", str(model_path), str(out)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_verify_fails_on_a_tampered_model(model_path, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), str(out), "--lowering", "dense", "--align", "1"]) == 0
    model = onnx.load(out)
    weight = next(i for i in model.graph.initializer if i.name == "conv10_kse_weight")
    values = onnx.numpy_helper.to_array(weight) * 1.01
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, out)
    assert main(["verify", str(model_path), str(out)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_no_eligible_conv_writes_unchanged_copy(tmp_path):
    src, dst = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(conv_stack((3, 8)), src)
    report = tmp_path / "r.json"
    assert main(["optimize", str(src), str(dst), "--report", str(report)]) == 0
    assert "unchanged copy" in json.loads(report.read_text())["note"]
    assert onnx.load(dst).graph.node == onnx.load(src).graph.node


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"\x00\x01garbage\xff" * 10, "not an ONNX model"),
    (b"hello, I am a text file\n", "not an ONNX model"),
])
def test_bad_input_files(tmp_path, capsys, content, message):
    src = tmp_path / "bad.onnx"
    if content is not None:
        src.write_bytes(content)
    dst = tmp_path / "out.onnx"
    assert main(["optimize", str(src), str(dst)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and str(src) in err and len(err.splitlines()) == 1
    assert not dst.exists()


def test_directory_and_same_output_refused(model_path, tmp_path, capsys):
    assert main(["optimize", str(tmp_path), str(tmp_path / "o.onnx")]) == 1
    assert "is a directory" in capsys.readouterr().err
    before = model_path.read_bytes()
    assert main(["optimize", str(model_path), str(model_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert model_path.read_bytes() == before


@pytest.mark.parametrize("args, flag", [
    (["--G", "0"], "--G"), (["--T", "-1"], "--T"), (["--alpha", "-0.5"], "--alpha"),
    (["--skip", "conv[1"], "--skip"), (["--align", "0"], "--align"),
])
def test_bad_options(model_path, tmp_path, capsys, args, flag):
    dst = tmp_path / "out.onnx"
    assert main(["optimize", str(model_path), str(dst), *args]) == 2
    err = capsys.readouterr().err
    assert flag in err and not dst.exists()


def test_unknown_lowering_is_a_usage_error(model_path, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(model_path), str(tmp_path / "o.onnx"), "--lowering", "magic"])
    assert exc.value.code == 2


@pytest.mark.parametrize("argv, flag", [
    (["verify", "a.onnx", "b.onnx", "--batch", "0"], "--batch"),
    (["verify", "a.onnx", "b.onnx", "--rtol", "-1"], "--rtol"),
    (["verify", "a.onnx", "b.onnx", "--seed", "-1"], "--seed"),
    (["bench", "a.onnx", "--threads", "0"], "--threads"),
    (["bench", "a.onnx", "--repeats", "0"], "--repeats"),
    (["bench", "a.onnx", "--batch", "1,x"], "--batch"),
])
def test_verify_and_bench_options_checked_before_any_file_is_read(capsys, argv, flag):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.splitlines()) == 1


def test_help_shows_defaults_and_metavars(capsys):
    texts = {}
    for command in ("score", "optimize", "verify", "finetune", "eval", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        texts[command] = " ".join(capsys.readouterr().out.split())
    assert "--mean MEAN" in texts["eval"] and "--std STD" in texts["eval"]
    assert "--skip GLOB" in texts["optimize"] and "--only GLOB" in texts["score"]
    assert "GLOB" not in texts["eval"] and "GLOB" not in texts["finetune"]
    assert "--lowering {auto,dense,compact,factored}" in texts["optimize"]
    assert "(default: auto)" in texts["optimize"] and "(default: 0.0)" in texts["verify"]
    assert "(default: 30)" in texts["bench"] and "(default: 4)" in texts["score"]


def test_debug_shows_the_cause(tmp_path, capsys):
    """Without --debug one line; with it the traceback, the original error chained."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    assert main(["score", str(bad)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    from kse_onnx.errors import ModelError

    with pytest.raises(ModelError) as info:
        main(["--debug", "score", str(bad)])
    assert info.value.__cause__ is not None


def test_score_json_carries_the_per_channel_plan(model_path, tmp_path):
    """From the JSON alone, the indicator is recomputed from its two terms and the levels
    and q from the indicator: the decision can be audited and replayed."""
    import numpy as np

    from kse_onnx.analysis import kse

    out_json = tmp_path / "score.json"
    assert main(["score", str(model_path), "--G", "5", "--T", "1", "--alpha", "0.5",
                 "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    settings = data["settings"]
    compressed = [x for x in data["layers"] if x["status"] == "compressed"]
    assert compressed
    for layer in compressed:
        ch = layer["channels"]
        n, c = layer["shape"][:2]
        assert all(len(ch[key]) == c for key in ("level", "q", "indicator", "sparsity",
                                                 "entropy"))
        s, e, v = (np.array(ch[key]) for key in ("sparsity", "entropy", "indicator"))
        assert np.all(np.isfinite(v)) and np.ptp(s) > 0 and np.ptp(e) > 0
        np.testing.assert_allclose(kse.kse_indicator(s, e, settings["alpha"]), v, atol=1e-12)
        levels, q = kse.levels_and_counts(v, n, settings["G"], settings["T"])
        assert levels.tolist() == ch["level"] and q.tolist() == ch["q"]
        assert sum(qc > 0 for qc in ch["q"]) == layer["kept_channels"]
        assert np.bincount(levels, minlength=settings["G"]).tolist() == \
            layer["channels_per_level"]
    skipped = [x for x in data["layers"] if x["status"] != "compressed"]
    assert skipped and all(x["channels"] is None for x in skipped)
