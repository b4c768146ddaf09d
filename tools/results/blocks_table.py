"""Removing whole residual blocks (``--budget-blocks``) against cutting channels, after
training, with no labels: the KSE authors' ResNet-56 (CIFAR-10 JPEG copy, batch 64) and
the Fashion-MNIST ResNet-20 (batches 1 and 64).

    python -m tools.results.blocks_table [--models resnet56,fmnist_resnet20]
        [--rows float:0.6,int8:0.65]
        [--variants channels:act,channels:distill,blocks:act,blocks:distill]
        [--work out/blocks_table] [--reuse]

Each row is one ``kse-onnx optimize ORIGINAL OUT --calibration C --target-latency R
[--quantize int8-static] --batches B --threads 1 [--budget-blocks] --refit MODE`` in its
own process under ``/usr/bin/time -v`` (wall seconds, peak memory); C is the first 1,024
training images (labels never read). Accuracy: top-1 on the 10,000 test images.
Latency: every written model of one model, the original and onnxruntime's static INT8
of it (QDQ, calibrated on 256 of the same images) run interleaved, 1 thread, medians,
as ratios to the float original and to that INT8, at the bench batch (ResNet-56: 64;
Fashion-MNIST: 1 and 64). A row whose command fails gives its error line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from kse_onnx.evaluate import evaluate
from kse_onnx.quantize.ptq import quantize_int8
from kse_onnx.runtime.bench import interleaved_latency
from tools import common
from tools.common import ROOT
from tools.results.distill_study import fmnist_resnet20, resnet56
from tools.results.speed_table import KSE, timed_run

MODELS = {"resnet56": (resnet56, "64", (64,)),
          "fmnist_resnet20": (fmnist_resnet20, "1,64", (1, 64))}


def rows_of(text: str, float_value: bool = True) -> list[tuple[str, float | str]]:
    """``float:0.6,int8:0.65`` -> [("float", 0.6), ("int8", 0.65)] (``float_value``);
    ``blocks:act`` -> [("blocks", "act")]."""
    out = []
    for item in text.split(","):
        key, value = item.split(":")
        out.append((key, float(value) if float_value else value))
    return out


def one_model(name: str, args) -> list[dict]:
    load, batches, bench_batches = MODELS[name]
    folder = args.work / name
    folder.mkdir(parents=True, exist_ok=True)
    teacher, x_train, x_test, y_test, _ = load(folder)
    calibration = folder / "calibration_1024.npz"
    if not calibration.exists():
        np.savez(calibration, x=x_train[:1024])
    int8 = folder / "ort_int8.onnx"
    if not int8.exists():
        onnx.save(quantize_int8(onnx.load(teacher), "int8-static", set(), x_train[:256],
                                share=False)[0], int8)
    results = [{"model": name, "row": "original float", "path": str(teacher)},
               {"model": name, "row": "onnxruntime INT8", "path": str(int8)}]
    for kind, r in rows_of(args.rows):
        for unit, refit in rows_of(args.variants, float_value=False):
            label = f"{unit} {kind} R={r:g} {refit}"
            out = folder / (label.replace(" ", "_").replace("=", "") + ".onnx")
            cmd = [KSE, "optimize", str(teacher), str(out), "--calibration",
                   str(calibration), "--target-latency", f"{r:g}", "--batches", batches,
                   "--threads", "1", "--refit", refit, "--overwrite", "--report",
                   str(out.with_suffix(".json"))]
            cmd += ["--quantize", "int8-static"] if kind == "int8" else []
            cmd += ["--budget-blocks"] if unit == "blocks" else []
            run = timed_run(cmd, out.with_suffix(".log"), args.reuse)
            row = {"model": name, "row": label, "unit": unit, "kind": kind, "R": r,
                   "refit": refit, "seconds": round(run["seconds"], 1),
                   "peak_mib": round(run["peak_mib"]), "error": run["error"],
                   "command": " ".join(["kse-onnx", *cmd[1:]]).replace(
                       str(folder) + "/", "")}
            if run["code"] == 0:
                row["path"] = str(out)
                report = json.loads(out.with_suffix(".json").read_text())
                blocks = (report.get("budget") or {}).get("blocks") or {}
                row["blocks_removed"] = len(blocks.get("removed") or [])
            print(json.dumps(row), flush=True)
            results.append(row)
    for row in results:
        if row.get("path"):
            row["top1"] = evaluate(row["path"], x_test, y_test).top1
            row["file_bytes"] = Path(row["path"]).stat().st_size
    paths = {row["row"]: row["path"] for row in results if row.get("path")}
    for batch in bench_batches:
        timings = interleaved_latency(paths, batch, 1, repeats=args.repeats,
                                      budget_s=args.budget_s)
        ms = {t.label: t.median_ms for t in timings}
        for row in results:
            if row.get("path"):
                row.setdefault("latency", {})[f"b{batch}"] = (
                    round(ms[row["row"]] / ms["original float"], 3),
                    round(ms[row["row"]] / ms["onnxruntime INT8"], 3))
    return results


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--models", default="resnet56,fmnist_resnet20")
    parser.add_argument("--rows", default="float:0.6,int8:0.65")
    parser.add_argument("--variants", default="channels:act,channels:distill,blocks:act,"
                                                "blocks:distill",
                        help="unit:refit pairs (unit: channels, or blocks = --budget-blocks)")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "blocks_table")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--reuse", action="store_true",
                        help="read a finished row's log and files instead of running it")
    args = parser.parse_args()
    all_rows = []
    for name in args.models.split(","):
        all_rows += one_model(name, args)
    with open(args.work / "blocks_rows.jsonl", "a") as f:
        for row in all_rows:
            f.write(json.dumps(row) + "\n")
    common.print_header()
    print("| model | row | test top-1 | drop (points) | latency: to float / to INT8 "
          "original | file bytes | blocks removed | seconds (peak) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in all_rows:
        base = next(r["top1"] for r in all_rows if r["model"] == row["model"]
                    and r["row"] == "original float")
        if not row.get("path"):
            print(f"| {row['model']} | {row['row']} | failed: {row['error']} | | | | | "
                  f"{row['seconds']} s |")
            continue
        latency = "; ".join(f"{b}: {a:.3f} / {c:.3f}" for b, (a, c) in row["latency"].items())
        peak = f" ({row['peak_mib']} MiB)" if "peak_mib" in row else ""
        print(f"| {row['model']} | {row['row']} | {row['top1']:.4f} | "
              f"{100 * (base - row['top1']):.2f} | {latency} | {row['file_bytes']:,} | "
              f"{row.get('blocks_removed', '')} | {row.get('seconds', 0)} s{peak} |")


if __name__ == "__main__":
    main()
