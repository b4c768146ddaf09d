"""Fuzz kse-onnx: random CNNs through optimize + verify, mutated model bytes through the
loader, structural mutations (node and tensor names, graph input lists, sparse tensors
with odd external data, recorded metadata) through optimize + verify on the CLI, and data
files (.npz, IDX, gzip IDX, image folders; valid, random bytes, truncated, bit flips,
wrong dtypes, pickles, huge header shapes, wrong shapes, NaN/inf, bad labels, empty)
through every command that reads them (eval, verify --inputs, finetune --data,
optimize/refit --calibration, int8-static calibration). Prints counts: cases,
succeeded, refused (by reason), and the failures, which must all be 0: crashed
(internal errors, tracebacks, messages over one line, changed inputs, outputs left on
refusal), hung (a case over --timeout seconds), exit 0 on certainly bad data.

    python -m tools.scripts.fuzz [--graphs 2000] [--mutations 2000] [--structures 2000]
                         [--data 1000] [--seed 0] [--timeout 300]
"""

from __future__ import annotations

import collections
import re
import signal
import sys
import tempfile
import traceback
from pathlib import Path

from tools import common
from tools.fuzzing.cases import (
    data_models,
    run_bytes_case,
    run_data_case,
    run_graph_case,
    run_structure_case,
)
from tools.graphs import residual_net

TIMEOUT_S = 300


class Hung(BaseException):
    """A case ran over the time limit (a BaseException: no ``except Exception`` eats it)."""


def _alarm(signum, frame):
    raise Hung()


def reason_class(outcome: str) -> str:
    """Group refusals by message with paths and numbers removed."""
    text = re.sub(r"/\S+", "<path>", outcome)
    return re.sub(r"\d+", "N", text)[:110]


def failure_class(trace: str) -> str:
    """What kind of failure an assertion or exception is."""
    if "exit 0 on bad data" in trace:
        return "exit 0 on bad data"
    if "internal error" in trace:
        return "internal error"
    return "crashed"


def campaign(name, count, start, run) -> int:
    counts, reasons, failures = collections.Counter(), collections.Counter(), []
    previous = signal.signal(signal.SIGALRM, _alarm)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(start, start + count):
            folder = Path(tmp) / str(seed)
            folder.mkdir()
            signal.alarm(TIMEOUT_S)
            try:
                outcome = run(seed, folder)
            except Hung:
                failures.append((seed, "hung", f"over {TIMEOUT_S} s"))
                counts["hung"] += 1
                continue
            except Exception:  # an assertion or an unexpected exception: a failure
                trace = traceback.format_exc(limit=4)
                kind = failure_class(trace)
                failures.append((seed, kind, trace))
                counts[kind] += 1
                continue
            finally:
                signal.alarm(0)
            if outcome == "ok":
                counts["succeeded"] += 1
            else:
                counts["refused"] += 1
                reasons[reason_class(outcome)] += 1
    signal.signal(signal.SIGALRM, previous)
    bad = sum(counts[k] for k in ("crashed", "internal error", "hung", "exit 0 on bad data"))
    print(f"{name}: {count} cases, {counts['succeeded']} succeeded, "
          f"{counts['refused']} refused, {counts['crashed']} crashed, "
          f"{counts['internal error']} internal errors, {counts['hung']} hung, "
          f"{counts['exit 0 on bad data']} exit 0 on bad data")
    for reason, n in reasons.most_common(12):
        print(f"  {n:5d} x {reason}")
    for seed, kind, trace in failures[:5]:
        print(f"  {kind.upper()} seed {seed}:\n{trace}")
    return bad


def main() -> None:
    global TIMEOUT_S
    parser = common.parser(__doc__)
    parser.add_argument("--graphs", type=int, default=2000)
    parser.add_argument("--mutations", type=int, default=2000)
    parser.add_argument("--structures", type=int, default=2000)
    parser.add_argument("--data", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per case")
    args = parser.parse_args()
    TIMEOUT_S = args.timeout
    base = residual_net(16)
    crashed = campaign("random graphs", args.graphs, args.seed, run_graph_case)
    crashed += campaign("mutated bytes", args.mutations, args.seed,
                        lambda seed, folder: run_bytes_case(seed, folder, base))
    crashed += campaign("mutated structure", args.structures, args.seed,
                        lambda seed, folder: run_structure_case(seed, folder, base))
    if args.data:
        with tempfile.TemporaryDirectory() as tmp:
            models = data_models(Path(tmp))
            crashed += campaign("data files", args.data, args.seed,
                                lambda seed, folder: run_data_case(seed, folder, models))
    sys.exit(1 if crashed else 0)


if __name__ == "__main__":
    main()
