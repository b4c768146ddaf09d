"""Seconds and peak memory of the post-training refit (benchmark, not a test).

    python -m tools.benchmarks.refit_speed [--models fmnist_resnet20,resnet50] [--modes ls,act]

- ``fmnist_resnet20``: models/fmnist_resnet20.onnx, G=4,T=0, 1,024 Fashion-MNIST training
  images (targets: least squares < 15 s, the default mode < 60 s on 2 cores);
- ``resnet50``: the zoo's ResNet-50 (random weights, BatchNorm statistics randomised,
  224x224, exported at opset 17), G=4,T=0, 256 random images (targets: < 10 minutes,
  peak memory < 4 GB).
The model and images are prepared in one process (the zoo's torch build and export), then
each run is a separate process that only calls ``optimize``, so its peak resident memory
(``ru_maxrss``) is that of ``optimize`` from an ONNX file, as a user runs it;
the time is the refit's own (``report.extra['refit']['seconds']``) and the whole
``optimize`` call (dense lowering, no timing).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

from kse_onnx.options import RefitOptions
from tools import common
from tools.common import ROOT

PREPARE = r"""
import sys, warnings
import numpy as np
name, model, images = sys.argv[1], sys.argv[2], sys.argv[3]
if name == "fmnist_resnet20":
    from kse_onnx.data import fashion_mnist
    x = fashion_mnist("train")[0][:1024].astype(np.float32)[:, None] / 255.0
else:
    import onnx
    from models.export import export
    from models.zoo import build
    net, shape = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx.save(export(net, shape, 17), model)
    x = np.random.default_rng(0).standard_normal((256, *shape)).astype(np.float32)
np.savez(images, x=x)
print(len(x))
"""

CHILD = r"""
import json, resource, sys, time
from kse_onnx.api import optimize
from kse_onnx.options import CalibrationOptions, KSEOptions, LowerOptions, RefitOptions
model, images, n, mode, out = sys.argv[1:6]
n, positions = int(n), int(sys.argv[6])
start = time.perf_counter()
report = optimize(model, out, KSEOptions(G=4, T=0), lower_options=LowerOptions("dense"),
                  calibration=CalibrationOptions(images, n),
                  refit=RefitOptions(mode, refit_positions=positions), log=lambda line: None,
                  overwrite=True)
total = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
refit = report.extra["refit"]
print(json.dumps({{"mode": mode, "images": n, "positions": positions,
                  "refit_s": refit["seconds"], "optimize_s": round(total, 1),
                  "peak_MiB": round(peak), "layers": len(refit["layers"])}}))
"""


def main() -> None:
    parser = common.parser(__doc__, out="refit_speed")
    parser.add_argument("--models", default="fmnist_resnet20,resnet50")
    parser.add_argument("--modes", default="ls,act")
    parser.add_argument("--positions", default=str(RefitOptions().refit_positions),
                        help="--refit-positions values, comma-separated (0 = all)")
    args = common.parse(parser)
    common.print_header()
    print("| model | mode | images | positions | refit s | optimize s | peak memory |")
    print("|---|---|---|---|---|---|---|")
    code = CHILD.format(root=str(ROOT))
    for name in args.models.split(","):
        model = str(ROOT / "models" / "fmnist_resnet20.onnx") if name == "fmnist_resnet20" \
            else str(args.out / f"{name}.original.onnx")
        images = str(args.out / f"{name}.npz")
        n = subprocess.run([sys.executable, "-c", PREPARE.format(root=str(ROOT)), name,
                            model, images], check=True, cwd=ROOT, capture_output=True,
                           text=True).stdout.split()[-1]
        for mode, positions in itertools.product(args.modes.split(","),
                                                 args.positions.split(",")):
            out = str(args.out / f"{name}_{mode}_{positions}.onnx")
            done = subprocess.run([sys.executable, "-c", code, model, images, n, mode, out,
                                   positions],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                print(f"| {name} | {mode} | {positions} | failed: "
                      f"{done.stderr.strip().splitlines()[-1]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {name} | {mode} | {r['images']} | {positions} | {r['refit_s']:.1f} | "
                  f"{r['optimize_s']:.1f} | {r['peak_MiB']} MiB |", flush=True)


if __name__ == "__main__":
    main()
