"""Speed table: for each model, the float original, onnxruntime's INT8 of it, the KSE
latency budget in float, and the budget + INT8 at two values of R, timed side by side.

    python -m tools.results.speed_table --models resnet50,resnet56 [--work /tmp/speed]
        [--r 0.6,0.8] [--float-r 0.6] [--reuse] [--refit none] [--calibration-images 32]

Models (built in :mod:`speed_models`): the zoo's ResNet-50 at 224x224 (random weights,
batches 1 and 8), the KSE authors' ResNet-56 (CIFAR-10, batch 64), a YOLOv8n-width
detector at 320x320 (batch 1), torchvision's ImageNet MobileNetV2 (batch 1). Calibration:
random normal images of the model's input size (no ImageNet offline; timing does not
depend on them); agreement: top-1 of each output against the float original on 64 other
random images (classifiers), relative L2 error of the outputs (the detector).

Each optimize runs as its own process under /usr/bin/time -v (wall seconds, peak
memory). Latency: every row of one model interleaved
(kse_onnx.runtime.bench.interleaved_latency), 1 thread, medians, as ratios to the float
original and to onnxruntime's INT8 of it (static QDQ by kse_onnx.quantize.ptq, calibrated
on the same images). Prints a Markdown table.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx

from kse_onnx.quantize.ptq import quantize_int8
from kse_onnx.runtime.bench import interleaved_latency
from kse_onnx.runtime.ort import session
from tools import common
from tools.common import ROOT
from tools.results.speed_models import MODELS

KSE = str(ROOT / ".venv" / "bin" / "kse-onnx")


def timed_run(args: list[str], log: Path, reuse: bool = False) -> dict:
    """Run ``args`` under /usr/bin/time -v: wall seconds, peak MiB, exit code (with
    ``reuse``, read from the log of an earlier finished run instead)."""
    if not (reuse and log.exists() and "Exit status" in log.read_text()):
        with open(log, "w") as out:
            subprocess.call(["/usr/bin/time", "-v", *args], stdout=out, stderr=out,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    code = int(re.search(r"Exit status: (\d+)", text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = sum(float(v) * 60 ** i for i, v in enumerate(reversed(wall.group(1).split(":"))))
    cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text))
    return {"seconds": seconds, "cpu": cpu, "code": code,
            "peak_mib": int(peak.group(1)) / 1024 if peak else float("nan"),
            "error": "" if code == 0 else next(
                (line for line in text.splitlines() if "error" in line),
                text.strip().splitlines()[0])[:300]}


def agreement(models: dict, x: np.ndarray, classifier: bool) -> dict:
    outs = {}
    for label, path in models.items():
        sess = session(onnx.load(path), threads=1)
        name = sess.get_inputs()[0].name
        outs[label] = np.concatenate([sess.run(None, {name: x[i:i + 8]})[0]
                                      for i in range(0, len(x), 8)])
    ref = outs["original float"]
    result = {}
    for label, y in outs.items():
        if classifier:
            result[label] = f"{100 * np.mean(y.argmax(1) == ref.argmax(1)):.1f}% top-1"
        else:
            err = np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-12)
            result[label] = f"rel. L2 {err:.3f}"
    return result


def one_model(name: str, args, work: Path) -> list[str]:
    spec = MODELS[name]
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    src = spec.build(folder)
    rng = np.random.default_rng(0)
    calib = folder / "calibration.npz"
    np.savez(calib, x=rng.standard_normal((args.calibration_images, *spec.shape)
                                          ).astype(np.float32))
    x_agree = rng.standard_normal((64, *spec.shape)).astype(np.float32)
    paths = {"original float": src}
    info = {"original float": {"seconds": 0.0, "cpu": 0.0, "peak_mib": float("nan"),
                               "cmd": ""}}
    start = time.time()
    int8 = folder / "ort_int8.onnx"
    if not int8.exists():
        x = np.load(calib)["x"]
        onnx.save(quantize_int8(onnx.load(src), "int8-static", set(), x, share=False)[0], int8)
    paths["onnxruntime INT8"] = int8
    info["onnxruntime INT8"] = {"seconds": time.time() - start, "cpu": float("nan"),
                                "peak_mib": float("nan"), "cmd": "quantize_static (QDQ)"}
    batches = ",".join(str(b) for b in spec.batches)
    common = ["--batches", batches, "--threads", "1", "--calibration", str(calib),
              "--calibration-images", str(args.calibration_images), "--refit", args.refit,
              "--overwrite"]
    runs = [(f"KSE budget float R={args.float_r:g}", args.float_r, [])]
    runs += [(f"KSE budget + INT8 R={r:g}", r, ["--quantize", "int8-static"])
             for r in ([float(v) for v in args.r.split(",")] if args.r else spec.int8_r)]
    for label, r, extra in runs:
        out = folder / f"{label.replace(' ', '_').replace('=', '').replace('+', 'p')}.onnx"
        cmd = [KSE, "optimize", str(src), str(out), "--target-latency", f"{r:g}", *common,
               *extra, "--report", str(out.with_suffix(".json"))]
        result = timed_run(cmd, out.with_suffix(".log"), args.reuse)
        result["cmd"] = " ".join(["kse-onnx", *cmd[1:]]).replace(str(folder) + "/", "")
        info[label] = result
        print(f"{name} {label}: {result['seconds']:.0f} s, peak {result['peak_mib']:.0f} MiB, "
              f"exit {result['code']} {result['error']}", flush=True)
        if result["code"] == 0:
            paths[label] = out
    agree = agreement(paths, x_agree, spec.classifier)
    ratios: dict = {}
    for batch in spec.batches:
        timings = interleaved_latency({k: str(p) for k, p in paths.items()}, batch, 1,
                                      repeats=args.repeats, budget_s=args.budget_s)
        ms = {t.label: t.median_ms for t in timings}
        for label in paths:
            ratios.setdefault(label, []).append(
                f"b{batch}: {ms[label] / ms['original float']:.3f} / "
                f"{ms[label] / ms['onnxruntime INT8']:.3f}")
        print(f"{name} b{batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()),
              flush=True)
    size = os.path.getsize(src)
    rows = []
    for label, path in paths.items():
        i = info[label]
        peak = "" if np.isnan(i["peak_mib"]) else (f" ({i['cpu']:.0f} s CPU, "
                                                   f"{i['peak_mib'] / 1024:.2f} GiB)")
        rows.append(f"| {spec.title} | {label} | {'; '.join(ratios[label])} | "
                    f"{os.path.getsize(path) / size:.3f} | {i['seconds']:.0f} s{peak} | "
                    f"{agree[label]} |")
    for label, i in info.items():
        if label not in paths:
            rows.append(f"| {spec.title} | {label} | failed: {i['error']} | | "
                        f"{i['seconds']:.0f} s | |")
    rows.append(f"| {spec.title} | commands | `{info[runs[-1][0]]['cmd']}` (and the other "
                f"R, without --quantize for float) | | | |")
    return rows


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--models", default="resnet50,resnet56")
    parser.add_argument("--work", type=Path, default=Path("/tmp/speed_table"))
    parser.add_argument("--r", default="", help="R of the INT8 budget rows (default: the "
                                                "model's, speed_models.py)")
    parser.add_argument("--float-r", type=float, default=0.6)
    parser.add_argument("--refit", default="none", help="optimize --refit (none: speed only)")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=90.0)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the outputs of earlier finished runs in --work")
    args = parser.parse_args()

    common.print_header()
    rows = ["| model | row | latency ratio to float original / to INT8 original | file ratio "
            "| seconds taken (CPU, peak memory) | agreement with the float original |",
            "|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        rows += one_model(name, args, args.work)
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
