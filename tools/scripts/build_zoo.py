"""Export the model zoo to ONNX (opsets 13 and 17, dynamic batch) and check each export.

    python -m tools.scripts.build_zoo --out zoo/ [--names resnet20_cifar,...] [--opsets 13,17]
        [--kse-resnet56 ../shared/models/kse_resnet56_cifar10.pth] [--demo]

``--demo`` (re)writes the bundled demo model ``models/small_cnn.onnx``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import onnx

from models.export import conv_count, export, max_abs_diff
from models.zoo import CONV_COUNTS, NAMES, build, load_kse_resnet56
from tools import common
from tools.common import ROOT

DEMO = ROOT / "models" / "small_cnn.onnx"


def export_one(model, shape, path: Path, opset: int, expected_convs: int | None) -> str:
    start = time.perf_counter()
    proto = export(model, shape, opset)
    convs = conv_count(proto)
    if expected_convs is not None and convs != expected_convs:
        raise SystemExit(f"{path.name}: {convs} Conv nodes, expected {expected_convs}")
    onnx.save(proto, path)
    diff = max_abs_diff(model, proto, shape)
    return (f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, {convs} convs, "
            f"max |torch - onnxruntime| {diff:.2e}, {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "zoo")
    parser.add_argument("--names", default=",".join(NAMES))
    parser.add_argument("--opsets", default="13,17")
    parser.add_argument("--kse-resnet56", type=Path, help="the authors' ResNet-56 state dict")
    parser.add_argument("--demo", action="store_true", help=f"write {DEMO.relative_to(ROOT)}")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    opsets = [int(o) for o in args.opsets.split(",")]
    if args.demo:
        model, shape = build("small_cnn", seed=0)
        print(export_one(model, shape, DEMO, 17, CONV_COUNTS["small_cnn"]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names.split(","):
        model, shape = build(name, seed=0)
        for opset in opsets:
            print(export_one(model, shape, args.out / f"{name}_op{opset}.onnx", opset,
                             CONV_COUNTS[name]))
    if args.kse_resnet56:
        model = load_kse_resnet56(args.kse_resnet56)
        for opset in opsets:
            print(export_one(model, (3, 32, 32), args.out / f"kse_resnet56_op{opset}.onnx",
                             opset, 55))


if __name__ == "__main__":
    main()
