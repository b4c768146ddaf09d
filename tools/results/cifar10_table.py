"""The README's CIFAR-10 table: the KSE authors' ResNet-56 on the JPEG copy of CIFAR-10.

    python -m tools.results.cifar10_table [--epochs 1 --train-images 50000 --tune-lr 0.001]
        [--data ../shared/data/cifar10-jpeg.tar.gz] [--out out/cifar10] [--block]

Rows, all evaluated on the 10,000 JPEG test images with ``kse-onnx eval``:
- the original (the authors' weights, trained on the lossless images);
- the **control**: the original fine-tuned ``--epochs`` on ``--train-images`` JPEG
  training images (``finetune``: distillation from the original + labels,
  ``--control-lr``, ``--control-label-weight``). Every KSE row starts from it, is compared
  with it, and distils from it;
- onnxruntime's static INT8 of the control, and kse-onnx's (``--quantize int8-static``:
  the same with the input conv kept in float);
- KSE G=4,T=0 and G=5,T=1 of the control (compact lowering): as compressed; after the
  post-training refit (``--calibration``, 1,024 training images, ``--refit act``); the
  refit + ``--epochs`` of ``finetune`` (distillation from the control + labels,
  ``--tune-lr``); refit + INT8 in one ``optimize`` command;
- the control fine-tuned ``--epochs`` more exactly as the KSE rows are (distillation
  from the control + labels, ``--tune-lr``): the same extra training without KSE, so a
  KSE row above the control is read against it;
- with ``--block``, G=5,T=1 refitted with ``--refit block`` as well.

Everything is seeded; each step's result goes to ``OUT/results.json`` as soon as it is
known, and a rerun skips the steps whose result and model file exist (delete the JSON
to start over). Latency (onnxruntime CPU, 1 thread, batch 1 and 64): the control,
its INT8, each KSE refit model (the compressed and fine-tuned ones have the same graph,
other values) and each KSE + INT8 run interleaved in one loop, median of ``--repeats``
runs (fewer if ``--budget`` runs out), as a ratio to the control's median in the loop.
The extracted images, the .npz files and the models stay under ``--out`` (ignored by
git).
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import onnx

from kse_onnx import options as opts
from kse_onnx.api import optimize
from kse_onnx.calibration import training_data
from kse_onnx.data import load_data, load_dataset
from kse_onnx.finetune.train import finetune
from kse_onnx.graph.count import conv_counts
from kse_onnx.graph.io import save_model
from kse_onnx.quantize.apply import quantize_output
from kse_onnx.quantize.ptq import quantize_int8
from kse_onnx.runtime.bench import interleaved_latency
from models.export import export_kse_resnet56
from models.zoo import CIFAR_MEAN, CIFAR_STD
from tools import common
from tools.common import ROOT

SETTINGS = ((4, 0), (5, 1))
# Li et al., CVPR 2019, Table 1 (ResNet-56, CIFAR-10): top-1 %, params, FLOPs
PUBLISHED_BASELINE = 93.26
PUBLISHED = {(4, 0): (93.23, "0.43M", "60M"), (5, 1): (92.88, "0.36M", "50M")}
CONTROL_MORE = "control + {} more epoch(s), the KSE rows' fine-tuning"
NORMALISE = {"mean": tuple(str(v) for v in CIFAR_MEAN), "std": tuple(str(v) for v in CIFAR_STD)}
TEST_DATA = opts.DataOptions(**NORMALISE)


class Results:
    """Step results in a JSON file, written after every step (resume and rerun)."""

    def __init__(self, path: Path, cached_only: bool = False):
        self.path, self.cached_only = path, cached_only
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def step(self, key: str, fn, files=(), always: bool = False):
        if key in self.data and all(Path(f).exists() for f in files):
            return self.data[key]
        if self.cached_only and not always:
            return None
        start = time.perf_counter()
        value = fn()
        value = dict(value or {}, seconds=round(time.perf_counter() - start, 1))
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {key}: {value}",
              file=sys.stderr, flush=True)
        return value


def prepare_data(archive: Path, out: Path, train_images: int, calibration_images: int,
                 seed: int) -> dict:
    """Extract the archive (once) and write the .npz files: test (10k), the training
    subset (``train_images`` drawn without replacement, seeded; class folders are
    sorted, so the first images of the folder would be all one class) and the
    calibration images (the subset's first ``calibration_images``). uint8 NCHW +
    labels; normalisation is applied by ``--mean/--std`` on reading."""
    folder = out / "cifar10-jpeg"
    if not (folder / "test").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    files = {"test": out / "test.npz", "train": out / f"train_{train_images}_s{seed}.npz",
             "calibration": out / f"calibration_{calibration_images}_s{seed}.npz"}
    if all(f.exists() for f in files.values()):
        return files

    def as_uint8(x):
        return np.round(x * 255).astype(np.uint8)

    x, y = load_dataset(folder / "test")
    np.savez(files["test"], x=as_uint8(x), y=y)
    x, y = load_dataset(folder / "train")
    pick = np.random.default_rng(seed).permutation(len(x))[:train_images]
    np.savez(files["train"], x=as_uint8(x[pick]), y=y[pick])
    np.savez(files["calibration"], x=as_uint8(x[pick[:calibration_images]]),
             y=y[pick[:calibration_images]])
    return files


def kse_eval(model: Path, test: Path) -> float:
    """Top-1 accuracy as ``kse-onnx eval`` prints it."""
    cmd = [sys.executable, "-m", "kse_onnx.cli", "eval", str(model), "--data", str(test)]
    for v in CIFAR_MEAN:
        cmd += ["--mean", str(v)]
    for v in CIFAR_STD:
        cmd += ["--std", str(v)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return float(re.search(r"top-1 ([0-9.]+)", text).group(1))


def graph_counts(path: Path) -> dict:
    c = conv_counts(onnx.load(path))
    return {"graph_weights": c["weights"], "graph_macs": c["macs"]}


def main() -> None:
    parser = common.parser(__doc__, out="cifar10")
    common.add_shared_inputs(parser, data=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=50000,
                        help="training images per epoch (a seeded subset of the 50k; the "
                             "default, all of them, makes the script about an hour)")
    parser.add_argument("--calibration-images", type=int, default=1024)
    for flag, default, text in (
            ("--control-lr", 0.001, "the control's learning rate (cosine); 0.01 on 3,072 "
                                    "images lowered the accuracy"),
            ("--control-label-weight", 0.5, "the control's cross-entropy weight (the rest: "
                                            "distillation from the original)"),
            ("--tune-lr", 0.001, "learning rate of the KSE rows' fine-tuning (cosine)"),
            ("--pad-crop", 0, "fine-tuning augmentation (flip always): the padding is the "
                              "mean colour, which the original never saw"),
            ("--threads", 1, "torch threads of the fine-tuning; the trained weights depend "
                             "on it (reduction order), so a rerun must use the same count")):
        parser.add_argument(flag, type=type(default), default=default, help=text)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds of timed runs per batch at most (7 repeats at least)")
    parser.add_argument("--block", action="store_true",
                        help="also refit G=5,T=1 with --refit block (last)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default="4,0;5,1", help="G,T pairs")
    parser.add_argument("--results", type=Path, default=None,
                        help="the step results (default OUT/results.json); a second "
                             "process can fill another file, merged with --merge")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="add the steps of this results file first")
    parser.add_argument("--refit-mode", default="act", help="--refit of the KSE rows")
    parser.add_argument("--cached-only", action="store_true",
                        help="run no step but the latency: the table of the steps already "
                             "in the results")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--skip-tune", action="store_true",
                        help="leave out the refit + epochs rows (a partial table)")
    parser.add_argument("--one-command-int8", action="store_true",
                        help="KSE + INT8 by one optimize (refit again, then quantize); "
                             "default: quantize the refitted model, as that command does "
                             "after its refit, with the same images")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    res = Results(args.results or out / "results.json", args.cached_only)
    for extra in args.merge:
        res.data.update({k: v for k, v in json.loads(extra.read_text()).items()
                         if k not in res.data})
    settings = [tuple(int(v) for v in pair.split(",")) for pair in args.settings.split(";")]
    t_start = time.perf_counter()
    files = prepare_data(args.data, out, args.train_images, args.calibration_images,
                         args.seed)
    test, train, cal = files["test"], files["train"], files["calibration"]
    calibration = opts.CalibrationOptions(str(cal), args.calibration_images)
    tag = f"E{args.epochs}_n{args.train_images}_s{args.seed}_pc{args.pad_crop}"
    train_data = opts.DataOptions(**NORMALISE, pad_crop=args.pad_crop, flip=True)
    quiet = {"log": lambda text: None}

    original = out / "original.onnx"
    original.unlink(missing_ok=True)  # always from --weights (cheap)
    export_kse_resnet56(args.weights, original)
    control = out / f"control_{tag}_lr{args.control_lr}_w{args.control_label_weight}.onnx"
    tune = opts.FinetuneOptions(epochs=args.epochs, lr=args.control_lr, threads=args.threads,
                           val_fraction=0.0, label_weight=args.control_label_weight,
                           seed=args.seed, quiet=True)
    kse_tune = opts.FinetuneOptions(epochs=args.epochs, lr=args.tune_lr, threads=args.threads,
                               val_fraction=0.0, seed=args.seed, quiet=True)
    rows, acc = {}, {}

    def add(label, path):  # evaluated as soon as it exists: a cut run still has results
        result = res.step(f"eval {path.name}", lambda: {
            "top1": kse_eval(path, test), **graph_counts(path)})
        if result is not None and path.exists():
            rows[label], acc[label] = path, result

    def tune_on(student, output, teacher, options):
        data = training_data(train, train_data, onnx.load(str(student)))
        return finetune(student, output, teacher, data, options, train_data, **quiet)

    add("original", original)
    res.step(f"tune {control.name}", lambda: tune_on(
        original, control, original, tune), [control])
    add("control", control)

    ort_int8 = out / f"{control.stem}_ort_int8.onnx"

    def plain_int8():
        x = load_data(cal, TEST_DATA)[0]
        save_model(quantize_int8(onnx.load(control), "int8-static", set(), x)[0], ort_int8)

    res.step(f"int8 {ort_int8.name}", plain_int8, [ort_int8])
    add("onnxruntime INT8 of the control", ort_int8)
    our_int8 = out / f"{control.stem}_q8.onnx"  # kse-onnx's INT8: the input conv in float
    res.step(f"int8 {our_int8.name}", lambda: save_model(quantize_output(
        onnx.load(control), opts.QuantizeOptions("int8-static"),
        load_data(cal, TEST_DATA)[0][:args.calibration_images])[0], our_int8), [our_int8])
    add("kse-onnx INT8 of the control (input conv float)", our_int8)
    reports = {}
    compact = opts.LowerOptions("compact")
    for G, T in settings:
        kse, name = opts.KSEOptions(G=G, T=T, seed=args.seed), f"{control.stem}_G{G}T{T}"
        mode = args.refit_mode
        paths = {"compressed": out / f"{name}.onnx", "refit": out / f"{name}_{mode}.onnx",
                 "tuned": out / f"{name}_{mode}_tuned_lr{args.tune_lr}.onnx",
                 "int8": out / f"{name}_{mode}_int8.onnx"}

        def compress(kse=kse, path=paths["compressed"]):
            report = optimize(control, path, kse, lower_options=compact, overwrite=True)
            t = report.totals()
            return {"paper_weights": t["params_factored"], "paper_macs": t["macs_factored"],
                    "paper_weights_before": t["params_before"],
                    "paper_macs_before": t["macs_before"]}

        reports[G, T] = res.step(f"optimize {paths['compressed'].name}", compress,
                                 [paths["compressed"]])
        label = f"KSE G={G},T={T}"
        add(f"{label}, compressed", paths["compressed"])
        res.step(f"refit {paths['refit'].name}", lambda kse=kse, p=paths["refit"]: optimize(
            control, p, kse, lower_options=compact, overwrite=True, data=TEST_DATA,
            calibration=calibration, refit=opts.RefitOptions(args.refit_mode), **quiet) and None,
            [paths["refit"]])
        add(f"{label}, refit {args.refit_mode}", paths["refit"])
        if args.one_command_int8:
            res.step(f"refit+int8 {paths['int8'].name}", lambda kse=kse, p=paths["int8"]:
                     optimize(control, p, kse, lower_options=compact, overwrite=True,
                              data=TEST_DATA, calibration=calibration,
                              refit=opts.RefitOptions(args.refit_mode),
                              quantize=opts.QuantizeOptions("int8-static"), **quiet) and None,
                     [paths["int8"]])
        else:  # what the one command does after its refit, on the refitted model
            paths["int8"] = out / f"{name}_{mode}_q8.onnx"
            res.step(f"int8 {paths['int8'].name}", lambda p=paths: save_model(quantize_output(
                onnx.load(p["refit"]), opts.QuantizeOptions("int8-static"),
                load_data(cal, TEST_DATA)[0][:args.calibration_images])[0], p["int8"]),
                [paths["int8"]])
        add(f"{label}, refit {args.refit_mode} + INT8", paths["int8"])
        if args.skip_tune:
            continue
        res.step(f"tune {paths['tuned'].name}", lambda p=paths: tune_on(
            p["refit"], p["tuned"], control, kse_tune),
            [paths["tuned"]])
        add(f"{label}, refit {args.refit_mode} + {args.epochs} epoch(s)", paths["tuned"])
    if not args.skip_tune:  # the same extra training without KSE: is the gap KSE's?
        more = out / f"{control.stem}_more_lr{args.tune_lr}.onnx"
        res.step(f"tune {more.name}", lambda: tune_on(
            control, more, control, kse_tune), [more])
        add(CONTROL_MORE.format(args.epochs), more)
    timed = {"control": control, "onnxruntime INT8 of the control": ort_int8,
             "kse-onnx INT8 of the control (input conv float)": our_int8}
    lat = None
    for G, T in settings:
        refit = f"refit {args.refit_mode}"
        for key, labels in ((f"KSE G={G},T={T}", (refit, "compressed")),
                            (f"KSE G={G},T={T} + INT8", (f"{refit} + INT8",))):
            present = [f"KSE G={G},T={T}, {lb}" for lb in labels
                       if f"KSE G={G},T={T}, {lb}" in rows]
            if present:  # compressed, refit and tuned: one graph, other values
                timed[key] = rows[present[0]]

    def latency():
        models = {label: onnx.load(p) for label, p in timed.items()}
        return {f"b{b}": {t.label: t.ratio for t in interleaved_latency(
            models, b, 1, args.repeats, budget_s=args.budget)} for b in (1, 64)}

    if not args.no_latency:
        lat = res.step(f"latency {tag} r{args.repeats} m{len(timed)}", latency, always=True)
    if args.block:  # last: the table above is complete without it
        p = out / f"{control.stem}_G5T1_block.onnx"
        res.step(f"refit {p.name}", lambda: optimize(
            control, p, opts.KSEOptions(G=5, T=1, seed=args.seed), lower_options=compact,
            overwrite=True, data=TEST_DATA, calibration=calibration,
            refit=opts.RefitOptions("block"), **quiet) and None, [p])
        add("KSE G=5,T=1, refit block", p)
    wall = time.perf_counter() - t_start
    print_table(args, rows, acc, reports, lat, res.data, control, tag, wall)


def print_table(args, rows, acc, reports, lat, data, control, tag, wall) -> None:
    base = acc["control"]["top1"]
    size0 = control.stat().st_size
    t40 = next(iter(reports.values()))  # the original's counts
    common.print_header(
        f"E = {args.epochs} epoch(s) of {args.train_images} JPEG training images; control lr "
        f"{args.control_lr}, KSE fine-tune lr {args.tune_lr}; this invocation {wall:.0f} s")
    print("| model | JPEG test top-1 | vs control | conv weights graph / paper | "
          "conv MACs graph / paper | file | latency b1 | latency b64 | published (delta) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, path in rows.items():
        a = acc[label]
        setting = re.match(r"KSE G=(\d),T=(\d)", label)
        if setting:
            G, T = int(setting.group(1)), int(setting.group(2))
            r = reports[G, T]
            paper = f"{r['paper_weights'] / 1e6:.3f}M", f"{r['paper_macs'] / 1e6:.1f}M"
            top1, params, flops = PUBLISHED[G, T]
            published = f"{top1:.2f} ({top1 - PUBLISHED_BASELINE:+.2f}), {params} / {flops}"
            key = f"KSE G={G},T={T}" + (" + INT8" if "INT8" in label else "")
            timed = "block" not in label
        else:
            paper = (f"{t40['paper_weights_before'] / 1e6:.3f}M",
                     f"{t40['paper_macs_before'] / 1e6:.1f}M")
            published = f"{PUBLISHED_BASELINE:.2f} (baseline), 0.85M / 125M"
            same = label in ("original", CONTROL_MORE.format(args.epochs))
            key = "control" if same else label
            timed = not same
        gw, gm = a["graph_weights"], a["graph_macs"]
        graph_w = f"{gw / 1e6:.3f}M" if gw else "-"
        graph_m = f"{gm / 1e6:.1f}M" if gm else "-"
        b1, b64 = ((f"{lat['b1'][key]:.2f}", f"{lat['b64'][key]:.2f}")
                   if timed and lat and key in lat["b1"]
                   else ("-", "-") if timed else ("(same graph)", "(same graph)"))
        if not setting and same:
            b1 = b64 = "(= control)"
        print(f"| {label} | {100 * a['top1']:.2f} | {100 * (a['top1'] - base):+.2f} | "
              f"{graph_w} / {paper[0]} | {graph_m} / {paper[1]} | "
              f"{path.stat().st_size / size0:.3f} | {b1} | {b64} | {published} |")
    steps = {k: v["seconds"] for k, v in data.items()
             if control.stem in k or k == "eval original.onnx" or k.startswith(f"latency {tag}")}
    print(f"# step seconds (first run of each step), total {sum(steps.values()):.0f}: "
          + ", ".join(f"{k}: {v:.0f}" for k, v in steps.items()))


if __name__ == "__main__":
    main()
