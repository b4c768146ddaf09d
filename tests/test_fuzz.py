"""Fuzzing: random CNNs through every lowering, mutated bytes through the loader, valid
and damaged data files through every command that reads them. Each case either succeeds
(and passes verify) or is refused with a KSEError; anything else is a crash and fails
the test. tools/fuzz.py runs thousands."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import pytest

from fuzzgen import (
    DATA_KINDS,
    DATA_MUTATIONS,
    data_case,
    mutate,
    mutate_fields,
    mutate_metadata,
    mutate_structure,
    random_cnn,
    random_data_file,
)
from graphs import conv_stack, residual_net
from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.errors import KSEError
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.verify import verify

CASES = 50


def run_graph_case(seed: int, folder) -> str:
    """'ok' or 'refused: ...' for one random CNN through one random lowering."""
    rng = np.random.default_rng(seed)
    src, dst = folder / f"g{seed}.onnx", folder / f"g{seed}_out.onnx"
    onnx.save(random_cnn(seed), src)
    lowering = str(rng.choice(["dense", "compact", "factored"]))
    options = KSEOptions(G=int(rng.integers(1, 7)), T=int(rng.integers(0, 3)))
    try:
        optimize(src, dst, options, lower_options=LowerOptions(lowering,
                                                               align=int(rng.choice([1, 8]))))
        result = verify(src, dst)
    except KSEError as exc:
        assert not dst.exists()
        return f"refused: {exc}"
    assert result.exact, (seed, lowering, result.summary())
    return "ok"


def run_bytes_case(seed: int, folder, base: onnx.ModelProto) -> str:
    """Odd seeds: raw byte mutations; even seeds: field mutations that still parse."""
    src, dst = folder / f"m{seed}.onnx", folder / f"m{seed}_out.onnx"
    data = mutate(base.SerializeToString(), seed) if seed % 2 else mutate_fields(base, seed)
    src.write_bytes(data)
    try:
        optimize(src, dst)
    except KSEError as exc:
        assert not dst.exists()
        return f"refused: {exc}"
    return "ok"


def _cli(argv) -> tuple[int, str]:
    """Exit code and stderr of one CLI run; an internal error is a crash."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    text = err.getvalue().strip()
    assert "internal error" not in text, text
    if code and not text:  # verify's verdict is on stdout
        return code, out.getvalue().strip().splitlines()[-1]
    assert code == 0 or len(text.splitlines()) == 1, text
    return code, text


def run_structure_case(seed: int, folder, base: onnx.ModelProto) -> str:
    """Names, graph inputs, sparse tensors, metadata (:func:`fuzzgen.mutate_structure`)
    through ``optimize`` and ``verify``: each run succeeds or is refused in one line, the
    input files are never changed, a written output loads in onnxruntime."""
    kind, data = mutate_structure(base, seed, folder)
    src, dst = folder / f"s{seed}.onnx", folder / f"s{seed}_out.onnx"
    src.write_bytes(data)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    code, text = _cli(["optimize", str(src), str(dst), "--lowering",
                       ["dense", "compact", "factored"][seed % 3]])
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    if code:
        assert not dst.exists()
        return f"refused ({kind}): {text}"
    import onnxruntime as ort

    ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    if kind == "metadata":
        out = onnx.load(dst)
        mutate_metadata(out, seed)
        onnx.save(out, dst)
    code, text = _cli(["verify", str(src), str(dst)])
    if code:
        # a model that optimize wrote verifies, unless its recorded settings were changed
        assert kind == "metadata" or not text.startswith("FAIL"), (seed, kind, text)
        return f"refused ({kind}, verify): {text}"
    return "ok"


@pytest.mark.parametrize("block", range(5))
def test_random_graphs(tmp_path, block):
    outcomes = [run_graph_case(seed, tmp_path) for seed in range(block * 10, block * 10 + 10)]
    assert outcomes.count("ok") >= 5  # most random graphs are compressible


def test_mutated_bytes(tmp_path):
    base = residual_net(16)
    outcomes = [run_bytes_case(seed, tmp_path, base) for seed in range(CASES)]
    assert any(o.startswith("refused") for o in outcomes)


def test_invalid_utf8_name_is_refused(tmp_path):
    """Found by tools/fuzz.py (seed 1633): protobuf hands invalid UTF-8 back as bytes."""
    outcome = run_bytes_case(1633, tmp_path, residual_net(16))
    assert outcome.startswith("refused") and "UTF-8" in outcome


def test_mutated_structure(tmp_path):
    base = residual_net(16)
    outcomes = []
    for seed in range(24):
        folder = tmp_path / str(seed)
        folder.mkdir()
        outcomes.append(run_structure_case(seed, folder, base))
    assert "ok" in outcomes and any(o.startswith("refused") for o in outcomes)


DATA_COMMANDS = {
    "eval": ["eval", "{m}", "--data", "{d}"],
    "verify": ["verify", "{m}", "{o}", "--inputs", "{d}"],
    "finetune": ["finetune", "{o}", "{out}", "--teacher", "{m}", "--data", "{d}", "--epochs",
                 "1", "--batch", "4", "--threads", "1", "--quiet"],
    "optimize": ["optimize", "{m}", "{out}", "--calibration", "{d}", "--lowering", "dense",
                 "--refit", "ls", "--quiet"],
    "refit": ["refit", "{o}", "{out}", "--teacher", "{m}", "--calibration", "{d}", "--quiet"],
    "quantize": ["optimize", "{m}", "{out}", "--quantize", "int8-static", "--calibration", "{d}",
             "--refit", "none", "--lowering", "dense", "--quiet"],
}
LABELLED = ("eval", "finetune")  # the commands that read labels against the model's classes


def data_models(folder):
    """(model, its dense KSE output): a one-channel 8x8 classifier, as for Fashion-MNIST."""
    model, optimized = folder / "m.onnx", folder / "o.onnx"
    onnx.save(conv_stack((1, 16, 16)), model)
    optimize(model, optimized, lower_options=LowerOptions("dense"))
    return model, optimized


def _files(folder, outputs=()) -> dict:
    """Every file under ``folder`` and its bytes, except ``outputs`` (files, folders)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not any(p == o or o in p.parents for o in outputs)}


def data_command(seed: int) -> str:
    return sorted(DATA_COMMANDS)[(seed // len(DATA_KINDS)) % len(DATA_COMMANDS)]


def run_data_case(seed: int, folder, models) -> str:
    """One data file (:func:`fuzzgen.random_data_file`) through one command that reads
    data: it succeeds or is refused in one line (no internal error), writes nothing when
    refused, never changes its inputs, and never exits 0 on certainly bad data."""
    kind, mutation, bad, data = random_data_file(seed, folder, channels=1)
    command = data_command(seed)
    bad = bad and (mutation != "labels" or command in LABELLED)
    out = folder / "out.onnx"
    model, optimized = models
    argv = [a.format(m=model, o=optimized, out=out, d=data) for a in DATA_COMMANDS[command]]
    outputs = (out, folder / "out.onnx.ckpt")
    before = _files(folder, outputs)
    code, text = _cli(argv)
    assert _files(folder, outputs) == before  # the inputs are never changed
    assert {p for p in folder.rglob("*") if p.name.startswith(".kse-onnx-")} == set()
    if code:
        assert not out.exists(), (seed, command, text)
        return f"refused ({kind}, {mutation}, {command}): {text}"
    assert not bad, (seed, kind, mutation, command, "exit 0 on bad data")
    return "ok"


def test_data_files(tmp_path):
    """A seeded sample of the data campaign (tools/fuzz.py --data runs 1,000): the six
    readers, four formats, valid and damaged."""
    models = data_models(tmp_path)
    outcomes = []
    # a refit that succeeds takes seconds (its least squares); tools/fuzz.py runs those
    quick = [s for s in range(60) if data_command(s) not in ("optimize", "refit")
             or DATA_MUTATIONS[data_case(s)[1]]]
    for seed in quick[:24]:
        folder = tmp_path / str(seed)
        folder.mkdir()
        outcomes.append(run_data_case(seed, folder, models))
    assert "ok" in outcomes and sum(o.startswith("refused") for o in outcomes) >= 12
