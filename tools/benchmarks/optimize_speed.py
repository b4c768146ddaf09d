"""Speed of a default ``optimize`` (auto lowering) on the zoo's ResNet-50: this tree
against an older commit, with whether the two choose the same layer forms.

    python -m tools.benchmarks.optimize_speed [--old REF] [--rounds 1] [--out out/optimize_speed]
        [--old-report OLD.json]

Each run is a separate ``kse-onnx optimize`` process; its wall time, CPU time (user +
system, from the kernel's accounting of that process: the fair number on a shared,
loaded machine) and peak memory are printed with the load average around it. With
``--rounds N`` old and new alternate N times. ``--old-report`` reuses the report of an
old run made earlier (its numbers are then not re-measured). The model is built with
tools/scripts/build_zoo.py when missing. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tools import common
from tools.common import ROOT


def zoo_model(out: Path) -> Path:
    model = out / "zoo" / "resnet50_op17.onnx"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "tools.scripts.build_zoo", "--out",
                        str(model.parent), "--names", "resnet50", "--opsets", "17"],
                       check=True, cwd=ROOT)
    return model


def checkout(ref: str, where: Path) -> Path:
    """The package at ``ref`` (git archive), importable from ``where``."""
    archive = where / "old.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref, "kse_onnx"], check=True,
                       stdout=f)
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    return where


def run(label: str, source: Path, model: Path, out: Path) -> dict:
    """One ``optimize`` in its own process, importing kse_onnx from ``source``."""
    output, report = out / f"{label}.onnx", out / f"{label}.json"
    env = {**os.environ, "PYTHONPATH": str(source)}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kse_onnx.cli", "optimize", str(model),
                             str(output), "--report", str(report), "--overwrite"],
                            cwd=source, env=env, stdout=subprocess.DEVNULL,
                            stderr=(out / f"{label}.log").open("w"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status:
        raise SystemExit(f"{label}: optimize failed, see {out / f'{label}.log'}")
    return {"label": label, "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "load_before": load_before,
            "load_after": os.getloadavg()[0], "report": str(report)}


def forms(report: str) -> dict[str, str]:
    data = json.loads(Path(report).read_text())
    return data["settings"]["layer_forms"]


def main() -> None:
    parser = common.parser(__doc__, out="optimize_speed")
    parser.add_argument("--old", default="39e45a7", help="git ref of the old code")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--old-report", help="report of an old run made earlier")
    args = common.parse(parser)
    model = zoo_model(ROOT / "out")
    common.print_header(model.name)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        old = checkout(args.old, Path(tmp))
        for r in range(args.rounds):
            if not args.old_report:
                runs.append(run(f"old{r}", old, model, args.out))
            runs.append(run(f"new{r}", ROOT, model, args.out))
    for row in runs:
        print(f"{row['label']}: wall {row['wall_s']} s, CPU {row['cpu_s']} s, peak "
              f"{row['peak_rss_mib']} MiB, load {row['load_before']:.1f} -> "
              f"{row['load_after']:.1f}")
    old_report = args.old_report or next(r["report"] for r in runs if r["label"] == "old0")
    before, after = forms(old_report), forms(runs[-1]["report"])
    same = [n for n in before if before[n] == after.get(n)]
    print(f"layer forms: {len(same)} of {len(before)} the same")
    for name in before:
        if before[name] != after.get(name):
            print(f"  {name}: old {before[name]}, new {after.get(name)}")


if __name__ == "__main__":
    main()
