"""One fuzz case each: a random CNN through ``optimize`` + ``verify``; mutated model bytes
through the loader; structural mutations through the CLI; a data file through a command
that reads it. Each returns ``"ok"`` or ``"refused..."`` and raises (an assertion) on
anything else: a crash, a changed input, an output left on refusal, exit 0 on bad data.
tests/test_fuzz.py runs a seeded sample; ``python -m tools.scripts.fuzz`` runs thousands."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx

from kse_onnx.api import optimize
from kse_onnx.cli import main
from kse_onnx.errors import KSEError
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.verify import verify
from tools.fuzzing.generate import (
    DATA_KINDS,
    mutate,
    mutate_fields,
    mutate_metadata,
    mutate_structure,
    random_cnn,
    random_data_file,
)
from tools.graphs import conv_stack


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


def cli_run(argv) -> tuple[int, str]:
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
    """Names, graph inputs, sparse tensors, metadata (`tools.fuzzing.generate.mutate_structure`)
    through ``optimize`` and ``verify``: each run succeeds or is refused in one line, the
    input files are never changed, a written output loads in onnxruntime."""
    kind, data = mutate_structure(base, seed, folder)
    src, dst = folder / f"s{seed}.onnx", folder / f"s{seed}_out.onnx"
    src.write_bytes(data)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    code, text = cli_run(["optimize", str(src), str(dst), "--lowering",
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
    code, text = cli_run(["verify", str(src), str(dst)])
    if code:
        # a model that optimize wrote verifies, unless its recorded settings were changed
        assert kind == "metadata" or not text.startswith("FAIL"), (seed, kind, text)
        return f"refused ({kind}, verify): {text}"
    return "ok"


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


def files_under(folder, outputs=()) -> dict:
    """Every file under ``folder`` and its bytes, except ``outputs`` (files, folders)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not any(p == o or o in p.parents for o in outputs)}


def data_command(seed: int) -> str:
    return sorted(DATA_COMMANDS)[(seed // len(DATA_KINDS)) % len(DATA_COMMANDS)]


def run_data_case(seed: int, folder, models) -> str:
    """One data file (`tools.fuzzing.generate.random_data_file`) through one command that reads
    data: it succeeds or is refused in one line (no internal error), writes nothing when
    refused, never changes its inputs, and never exits 0 on certainly bad data."""
    kind, mutation, bad, data = random_data_file(seed, folder, channels=1)
    command = data_command(seed)
    bad = bad and (mutation != "labels" or command in LABELLED)
    out = folder / "out.onnx"
    model, optimized = models
    argv = [a.format(m=model, o=optimized, out=out, d=data) for a in DATA_COMMANDS[command]]
    outputs = (out, folder / "out.onnx.ckpt")
    before = files_under(folder, outputs)
    code, text = cli_run(argv)
    assert files_under(folder, outputs) == before  # the inputs are never changed
    assert {p for p in folder.rglob("*") if p.name.startswith(".kse-onnx-")} == set()
    if code:
        assert not out.exists(), (seed, command, text)
        return f"refused ({kind}, {mutation}, {command}): {text}"
    assert not bad, (seed, kind, mutation, command, "exit 0 on bad data")
    return "ok"
