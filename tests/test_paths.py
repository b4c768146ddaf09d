"""Writes over what they must not, reads outside the model's folder, process faults:
every command that writes checks all its paths first; the loader is the only reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphs import GraphBuilder, residual_net
from kse_onnx import paths
from kse_onnx.cli import main
from kse_onnx.errors import ModelError
from kse_onnx.graph import io
from kse_onnx.graph.io import load_model

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _external(folder: Path, name="m.onnx", location="m.onnx.data"):
    path = folder / name
    onnx.save_model(residual_net(16), path, save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def _spell(kind: str, target: Path, folder: Path, tag: str) -> str:
    """A path naming ``target`` another way: as is, with ./ and .., a symlink, a hard link."""
    if kind == "same":
        return str(target)
    if kind == "dotted":
        return str(folder / "." / ".." / folder.name / target.name)
    link = folder / f"link_{tag}"
    if kind == "symlink":
        os.symlink(target, link)
    else:
        os.link(target, link)
    return str(link)


# (command argv with {in}, {data}, {ext}, {out}, {x} the colliding spelling)
CASES = [
    ["optimize", "{in}", "{out}", "--lowering", "dense", "--report", "{x}:in"],
    ["optimize", "{in}", "{out}", "--lowering", "dense", "--report", "{x}:out"],
    ["optimize", "{in}", "{x}:ext", "--lowering", "dense"],
    ["optimize", "{in}", "{out}", "--lowering", "dense", "--report", "{x}:ext"],
    ["score", "{in}", "--json", "{x}:in"],
    ["score", "{in}", "--json", "{x}:ext"],
    ["finetune", "{in}", "{x}:in", "--teacher", "{teacher}", "--data", "{data}"],
    ["finetune", "{in}", "{x}:teacher", "--teacher", "{teacher}", "--data", "{data}"],
    ["finetune", "{in}", "{x}:data", "--teacher", "{teacher}", "--data", "{data}"],
]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES), kind=st.sampled_from(["same", "dotted", "symlink", "hard"]))
def test_no_output_may_be_an_input_or_another_output(tmp_path_factory, case, kind, capsys):
    folder = tmp_path_factory.mktemp("paths")
    src = _external(folder)
    teacher = folder / "teacher.onnx"
    onnx.save(residual_net(16), teacher)
    data = folder / "d.npz"
    np.savez(data, x=np.zeros((4, 3, 8, 8), np.float32), y=np.zeros(4, np.int64))
    out = folder / "o.onnx"
    out.write_bytes(b"previous output")
    targets = {"in": src, "ext": folder / "m.onnx.data", "out": out, "teacher": teacher,
               "data": data}
    before = _snapshot(folder)
    argv = []
    for arg in case:
        if arg.startswith("{x}:"):
            arg = _spell(kind, targets[arg[4:]], folder, "x")
        argv.append(arg.format(**{"in": src, "out": out, "teacher": teacher, "data": data}))
    before = _snapshot(folder)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kse-onnx: error: option" in err
    assert _snapshot(folder) == before  # nothing written, nothing left behind


def test_missing_report_folder_fails_before_any_work(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(residual_net(16), src)
    assert main(["optimize", str(src), str(out), "--report", str(tmp_path / "no" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()


def test_missing_finetune_folder_fails_before_training(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(residual_net(16), src)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    assert main(["finetune", str(src), str(tmp_path / "no" / "o.onnx"), "--teacher", str(src),
                 "--data", str(tmp_path / "d.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_disk_full_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(residual_net(16), src)

    class Full:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "open", Full, raising=False)
    assert main(["optimize", str(src), str(out), "--lowering", "dense"]) == 1
    err = capsys.readouterr().err
    assert f"{out}: cannot write (No space left on device)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file


@pytest.mark.parametrize("raised, code, word", [(KeyboardInterrupt, 130, "interrupted"),
                                                ("sigterm", 143, "terminated")])
def test_signals_leave_no_temporary_file(tmp_path, monkeypatch, capsys, raised, code, word):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(residual_net(16), src)
    real_replace = os.replace

    def interrupted_replace(a, b):
        if raised == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            raise raised()
        return real_replace(a, b)

    monkeypatch.setattr(io.os, "replace", interrupted_replace)
    assert main(["optimize", str(src), str(out), "--lowering", "dense"]) == code
    err = capsys.readouterr().err.strip()
    assert err == f"kse-onnx: {word}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_atomic_write_cleans_up_on_interrupt(tmp_path):
    def writer(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        paths.atomic_write(tmp_path / "r.json", writer=writer)
    assert list(tmp_path.iterdir()) == []


def test_score_into_a_closed_pipe_exits_quietly(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(residual_net(16), src)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "kse_onnx.cli", "score", str(src)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader left before anything was printed, as `| head -0`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b""


def test_names_are_printed_without_terminal_escapes(tmp_path, capsys):
    model = residual_net(16)
    model.graph.node[2].name = "evil\x1b]0;owned\x07\x1b[31m\u202e"
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    assert main(["score", str(src)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "evil\\x1b]0;owned\\x07" in out


def test_fifo_input_is_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=main(["score", str(fifo)])),
                              daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert result.get("code") == 1
    assert "not a regular file" in capsys.readouterr().err


# ---- external data: the one loader reads every tensor, sparse and attribute included


def _sparse_model(folder: Path, as_attribute: bool, location: str, **fields):
    """A model with a sparse tensor (initializer, or a Constant's sparse_value) whose
    values live in external data at ``location`` with the given extra fields."""
    b = GraphBuilder(3, 8)
    y = b.conv(b.input.name, 3, 16)
    values = numpy_helper.from_array(np.ones(4, np.float32), "sp")
    indices = numpy_helper.from_array(np.array([0, 5, 9, 15], np.int64), "sp_idx")
    sparse = helper.make_sparse_tensor(values, indices, [16])
    (folder / "weights.bin").write_bytes(np.ones(4, np.float32).tobytes())
    values = sparse.values  # make_sparse_tensor copied it
    del values.float_data[:]
    values.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "16", **fields}.items():
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    if as_attribute:  # a sparse initializer may not feed dense ops: it is listed only
        b.nodes.append(helper.make_node("Constant", [], ["sp"], name="spc", sparse_value=sparse))
        shape = b.const(np.array([1, 16, 1, 1], np.int64))
        y = b.op("Add", [y, b.op("Reshape", ["sp", shape])])
    out = helper.make_tensor_value_info(b.head(y, 16), TensorProto.FLOAT, ["batch", 10])
    graph = helper.make_graph(b.nodes, "sparse", [b.input], [out], b.inits,
                              sparse_initializer=[] if as_attribute else [sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("as_attribute", [False, True])
def test_sparse_external_data_inside_the_folder_is_read(tmp_path, as_attribute):
    model = load_model(_sparse_model(tmp_path, as_attribute, "weights.bin"))
    assert not any(t.external_data for t in io.all_tensors(model))


@pytest.mark.parametrize("as_attribute", [False, True])
@pytest.mark.parametrize("command", ["bench", "eval", "verify", "score"])
def test_sparse_external_data_outside_the_folder_is_refused(tmp_path, capsys, as_attribute,
                                                            command):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    src = _sparse_model(inner, as_attribute, "../secret.bin")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    argv = {"bench": ["bench", str(src)], "eval": ["eval", str(src), "--data",
                                                    str(tmp_path / "d.npz")],
            "verify": ["verify", str(src), str(src)], "score": ["score", str(src)]}[command]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "outside the model's folder" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("fields, words", [
    ({"offset": "-1"}, "not a non-negative integer"),
    ({"offset": "abc"}, "not a non-negative integer"),
    ({"offset": "1e3"}, "not a non-negative integer"),
    ({"length": "999999"}, "declares length"),
    ({"length": "4"}, "declares length"),
    ({"location": "weights.bin\0x"}, "NUL"),
    ({"location": ""}, "empty external data location"),
    ({"offset": "12"}, "shorter than declared"),
])
def test_malformed_external_data_fields_are_one_line_errors(tmp_path, capsys, fields, words):
    location = fields.pop("location", "weights.bin")
    src = _sparse_model(tmp_path, False, location, **fields)
    assert main(["score", str(src)]) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "internal" not in err


def test_fifo_as_external_data_is_refused(tmp_path):
    src = _sparse_model(tmp_path, False, "pipe.bin")
    os.mkfifo(tmp_path / "pipe.bin")
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(src)


def test_an_output_name_of_255_bytes_works(tmp_path, capsys):
    """Temporary files have short random names, not the output's name plus a suffix:
    the longest valid name works, leaves nothing else behind, and verifies."""
    src, out = tmp_path / "m.onnx", tmp_path / ("o" * 250 + ".onnx")
    onnx.save(residual_net(16), src)
    report = tmp_path / ("r" * 250 + ".json")
    assert main(["optimize", str(src), str(out), "--lowering", "dense",
                 "--report", str(report)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", out.name,
                                                                 report.name])
    assert main(["verify", str(src), str(out)]) == 0
    paths.atomic_write(tmp_path / ("j" * 255), "{}")
    assert (tmp_path / ("j" * 255)).read_text() == "{}"


def test_an_output_name_too_long_is_an_option_error(tmp_path, capsys):
    src, out = tmp_path / "m.onnx", tmp_path / ("o" * 251 + ".onnx")
    onnx.save(residual_net(16), src)
    assert main(["optimize", str(src), str(out), "--lowering", "dense"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kse-onnx: error: option OUTPUT: oooo") and "256 bytes" in err
    assert "longer than the file system allows" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_large_model_whose_weights_file_name_is_too_long_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_PROTOBUF_LIMIT", 10_000)  # stand-in for 2 GiB
    out = tmp_path / ("o" * 250 + ".onnx")
    with pytest.raises(ModelError, match="a name too long for the file system"):
        io.save_model(residual_net(32), out)
    assert list(tmp_path.iterdir()) == []
