"""An Olive workflow that runs KSE then onnxruntime's static INT8, end to end with the real
olive-ai (``pip install 'kse-onnx[olive]'``), on the bundled Fashion-MNIST ResNet-20.

    python -m tools.scripts.olive_workflow [--model models/fmnist_resnet20.onnx] [--images 256]
        [--work /tmp/kse_olive] [--max-drop 0]

Writes into ``--work``: ``olive_data.py`` (the user script: the first ``--images``
Fashion-MNIST training images, labels unused, as Olive dataset ``fmnist_images``),
``workflow.json`` (passes ``kse`` = kse_onnx.olive.KSECompression with the data_config,
then ``int8`` = OnnxStaticQuantization with the same data_config), ``packages.json``
(Olive's package config plus the KSE pass), then runs ``olive run`` and scores the
original and the output on the 10,000 test images with onnxruntime (1 thread).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tools import common
from tools.common import ROOT

USER_SCRIPT = '''
import numpy as np
from olive.data.registry import Registry

from kse_onnx.data import load_data
from kse_onnx.options import DataOptions


@Registry.register_dataset()
def fmnist_images(path, count, input_name):
    x = load_data(path, DataOptions())[0][:count]
    return [({input_name: x[i]}, 0) for i in range(len(x))]
'''


def workflow(model: Path, train: str, images: int, input_name: str, work: Path,
             max_drop: float) -> dict:
    data = {"name": "calibration", "user_script": str(work / "olive_data.py"),
            "load_dataset_config": {"type": "fmnist_images", "params": {
                "path": train, "count": images, "input_name": input_name}},
            "dataloader_config": {"batch_size": 64}}
    kse = {"type": "KSECompression", "G": 4, "T": 0, "lowering": "compact",
           "data_config": "calibration", "calibration_images": images, "quiet": True}
    if max_drop:
        kse["max_drop"] = max_drop
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(model)},
        "systems": {"local": {"type": "LocalSystem",
                              "accelerators": [{"device": "cpu",
                                                "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [data],
        "passes": {"kse": kse,
                   "int8": {"type": "OnnxStaticQuantization", "data_config": "calibration",
                            "quant_format": "QDQ", "precision": "int8"}},
        "host": "local", "target": "local", "cache_dir": str(work / "cache"),
        "output_dir": str(work / "output"), "log_severity_level": 3,
    }


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--model", default=str(ROOT / "models" / "fmnist_resnet20.onnx"))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--work", default="/tmp/kse_olive")
    parser.add_argument("--max-drop", type=float, default=0.0)
    args = parser.parse_args()
    import onnx

    from kse_onnx.data import FASHION_MNIST, load_data
    from kse_onnx.guard.measure import input_name, outputs
    from kse_onnx.olive import write_package_config
    from kse_onnx.options import DataOptions

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "olive_data.py").write_text(USER_SCRIPT)
    model = Path(args.model).resolve()
    name = input_name(onnx.load(model))
    train = str(FASHION_MNIST / "train-images-idx3-ubyte.gz")
    config = work / "workflow.json"
    config.write_text(json.dumps(workflow(model, train, args.images, name, work,
                                          args.max_drop), indent=2) + "\n")
    packages = write_package_config(work / "packages.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "olive", "run", "--config", str(config),
                    "--package-config", str(packages)], check=True, env=env)
    written = sorted((work / "output").rglob("*.onnx"))
    if not written:
        raise SystemExit(f"olive wrote no model under {work / 'output'}")
    x, y = load_data(str(FASHION_MNIST / "t10k-images-idx3-ubyte.gz"), DataOptions())
    for label, path in (("original", model), ("olive output", written[0])):
        accuracy = float((outputs(onnx.load(path), x)[0].argmax(1) == y).mean())
        ops = sorted({n.op_type for n in onnx.load(path).graph.node})
        print(f"{label}: {path} ({os.path.getsize(path)} bytes), test accuracy "
              f"{accuracy:.4f}; ops {', '.join(ops)}")


if __name__ == "__main__":
    main()
