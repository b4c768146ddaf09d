"""What every tool shares: the repository's folders, the one environment header each
result starts with, argument parsing, and latency ratios from interleaved runs.

Run the tools as modules from the repository root (``python -m tools.results.int8_table``):
the root is then on ``sys.path``, so ``kse_onnx``, ``models`` and ``tools`` import without
any path patching."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared"  # the project's shared folder (data/, models/), outside git
FMNIST_RESNET20 = ROOT / "models" / "fmnist_resnet20.onnx"
KSE_RESNET56 = SHARED / "models" / "kse_resnet56_cifar10.pth"
CIFAR10_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` found, without importing it."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def command_line(argv: list[str] | None = None) -> str:
    """How this tool was started: ``python -m tools.x.y ARGS`` when run as a module."""
    argv = sys.argv if argv is None else argv
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec is not None and spec.name else \
        f"python {argv[0] if argv else '?'}"
    return " ".join([program, *(shlex.quote(a) for a in argv[1:])])


def environment(extra: str = "", now: datetime.datetime | None = None) -> str:
    """One line: date (UTC), machine, CPU, cores, load, library versions, command line,
    then ``extra`` (the tool's own settings)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    libraries = [f"{name} {v}" for name, v in (
        ("python", platform.python_version()),
        ("onnxruntime", version("onnxruntime", "onnxruntime-gpu")),
        ("torch", version("torch"))) if v]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [f"{now:%Y-%m-%d %H:%M} UTC",
             f"{platform.node() or 'machine'} {platform.machine()}, {cpu_name()}, "
             f"{os.cpu_count()} cores, load {load:.1f}",
             ", ".join(libraries), f"`{command_line()}`"]
    return "# " + " | ".join(parts + ([extra] if extra else []))


def print_header(extra: str = "") -> None:
    """Print :func:`environment`: the first line of every table a tool prints."""
    print(environment(extra), flush=True)


def parser(doc: str | None, out: str | None = None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of the tool's docstring; with
    ``out``, an ``--out`` folder defaulting to ``out/OUT`` in the repository (ignored by git)."""
    result = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if out is not None:
        result.add_argument("--out", type=Path, default=ROOT / "out" / out,
                            help="folder for the models and results this tool writes")
    return result


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed arguments, with the ``--out`` folder (if any) created and, where the tool
    has an integer ``--threads`` and has imported torch, torch set to that many threads."""
    args = parser.parse_args(argv)
    if getattr(args, "out", None) is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    if isinstance(getattr(args, "threads", None), int) and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(args.threads)
    return args


def add_shared_inputs(parser: argparse.ArgumentParser, data: bool = False) -> None:
    """``--weights``: the KSE authors' ResNet-56 (.pth) in the shared folder; with
    ``data``, ``--data``: the JPEG copy of CIFAR-10 there too."""
    parser.add_argument("--weights", type=Path, default=KSE_RESNET56,
                        help="the KSE authors' ResNet-56 weights")
    if data:
        parser.add_argument("--data", type=Path, default=CIFAR10_JPEG,
                            help="CIFAR-10, JPEG copy (tar.gz)")


def ratios(models: dict, batch: int, threads: int = 1, **options) -> dict[str, float]:
    """Latency of each model as a ratio to the first one's: medians of interleaved runs
    (:func:`kse_onnx.runtime.bench.interleaved_latency`, ``options`` passed on)."""
    from kse_onnx.runtime.bench import interleaved_latency

    return {t.label: t.ratio for t in interleaved_latency(models, batch, threads, **options)}


if __name__ == "__main__":
    print_header()  # python -m tools.common: this machine's header
