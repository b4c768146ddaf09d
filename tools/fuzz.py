"""Fuzz kse-onnx: random CNNs through optimize + verify, mutated model bytes through the
loader, structural mutations (node and tensor names, graph input lists, sparse tensors
with odd external data, recorded metadata) through optimize + verify on the CLI. Prints
counts: cases, succeeded, refused (by reason), crashed (must be 0).

    python tools/fuzz.py [--graphs 2000] [--mutations 2000] [--structures 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from graphs import residual_net  # noqa: E402
from test_fuzz import run_bytes_case, run_graph_case, run_structure_case  # noqa: E402


def reason_class(outcome: str) -> str:
    """Group refusals by message with paths and numbers removed."""
    text = re.sub(r"/\S+", "<path>", outcome)
    return re.sub(r"\d+", "N", text)[:110]


def campaign(name, count, start, run) -> int:
    counts, reasons, crashes = collections.Counter(), collections.Counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(start, start + count):
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            try:
                outcome = run(seed, folder)
            except Exception:  # an assertion or an unexpected exception: a crash
                crashes.append((seed, traceback.format_exc(limit=4)))
                counts["crashed"] += 1
                continue
            if outcome == "ok":
                counts["succeeded"] += 1
            else:
                counts["refused"] += 1
                reasons[reason_class(outcome)] += 1
    print(f"{name}: {count} cases, {counts['succeeded']} succeeded, "
          f"{counts['refused']} refused, {counts['crashed']} crashed")
    for reason, n in reasons.most_common(8):
        print(f"  {n:5d} x {reason}")
    for seed, trace in crashes[:5]:
        print(f"  CRASH seed {seed}:\n{trace}")
    return counts["crashed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=2000)
    parser.add_argument("--mutations", type=int, default=2000)
    parser.add_argument("--structures", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = residual_net(16)
    crashed = campaign("random graphs", args.graphs, args.seed, run_graph_case)
    crashed += campaign("mutated bytes", args.mutations, args.seed,
                        lambda seed, folder: run_bytes_case(seed, folder, base))
    crashed += campaign("mutated structure", args.structures, args.seed,
                        lambda seed, folder: run_structure_case(seed, folder, base))
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
