"""Does the fine-tuning importer compute what onnxruntime computes on torchvision's
models? Classification nets, detection backbones (FPN) and segmentation nets, exported at
each opset, before and after ``optimize``. Not part of the test suite (it needs
torchvision, which the project does not depend on):

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        onnx onnxruntime onnx-graphsurgeon scipy scikit-learn onnxscript tqdm
    /tmp/tv/bin/python -m tools.scripts.torchvision_import_check [--opsets 13,17,18]
        [--models resnet18,...] [--lowerings compact] [--optimize-opsets 17]
        [--json out.json]

Opsets <= 17 use the legacy exporter, 18+ the dynamo exporter (onnxscript). Weights are
random with randomised BatchNorm statistics (as models/zoo.py does); inputs are photo
crops, batch 2. For each model and opset: the relative error ``||torch - ort|| / ||ort||``
(largest over the outputs) of the imported original and of each optimized form, which
must stay below 1e-4; or the importer's refusal (the operators it cannot map).
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from kse_onnx.api import optimize
from kse_onnx.errors import KSEError
from kse_onnx.finetune.importer import import_model
from kse_onnx.options import KSEOptions, LowerOptions
from kse_onnx.runtime.ort import session
from tools import common
from tools.graphs import photo_batch
from tools.scripts.torchvision_random import randomise

TOLERANCE = 1e-4


class Outputs(nn.Module):
    """A model whose outputs are a dict (FPN levels, segmentation heads) as a tuple."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, dict):
            return tuple(out.values())
        return out.logits if hasattr(out, "logits") else out


def _builders():
    import torchvision.models as tvm
    from torchvision.models import detection, segmentation
    from torchvision.models.detection.backbone_utils import (
        mobilenet_backbone,
        resnet_fpn_backbone,
    )

    def cls(name, size=128, **kw):
        return lambda: (getattr(tvm, name)(weights=None, **kw), size)

    return {
        # classification
        "resnet18": cls("resnet18"), "resnet50": cls("resnet50"),
        "mobilenet_v2": cls("mobilenet_v2"), "mobilenet_v3_small": cls("mobilenet_v3_small"),
        "efficientnet_b0": cls("efficientnet_b0"), "regnet_y_400mf": cls("regnet_y_400mf"),
        "shufflenet_v2_x0_5": cls("shufflenet_v2_x0_5"), "squeezenet1_1": cls("squeezenet1_1"),
        "densenet121": cls("densenet121"), "mnasnet0_5": cls("mnasnet0_5"),
        "googlenet": cls("googlenet", aux_logits=False, init_weights=False),
        "inception_v3": cls("inception_v3", 299, aux_logits=False, init_weights=False),
        "vgg11_bn": cls("vgg11_bn", 224), "alexnet": cls("alexnet", 224),
        "convnext_tiny": cls("convnext_tiny"), "efficientnet_v2_s": cls("efficientnet_v2_s"),
        "vit_b_16": cls("vit_b_16", 224), "swin_t": cls("swin_t", 224),
        "maxvit_t": cls("maxvit_t", 224),
        # detection backbones (FPN outputs)
        "resnet18_fpn": lambda: (resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                                     trainable_layers=5), 128),
        "mobilenet_v3_fpn": lambda: (mobilenet_backbone(
            backbone_name="mobilenet_v3_large", weights=None, fpn=True,
            trainable_layers=6), 128),
        "ssdlite_backbone": lambda: (detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None).backbone, 160),
        "ssd300_vgg16_backbone": lambda: (detection.ssd300_vgg16(
            weights=None, weights_backbone=None).backbone, 300),
        # segmentation
        "fcn_resnet50": lambda: (segmentation.fcn_resnet50(
            weights=None, weights_backbone=None, aux_loss=False), 128),
        "deeplabv3_mobilenet_v3_large": lambda: (segmentation.deeplabv3_mobilenet_v3_large(
            weights=None, weights_backbone=None, aux_loss=False), 128),
        "lraspp_mobilenet_v3_large": lambda: (segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None), 128),
    }


def export(model: nn.Module, size: int, opset: int) -> onnx.ModelProto:
    example = torch.zeros(2, 3, size, size)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opset <= 17:
            torch.onnx.export(model, example, buffer, dynamo=False, opset_version=opset,
                              input_names=["input"], do_constant_folding=True)
            return onnx.load_from_string(buffer.getvalue())
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    input_names=["input"], verbose=False)
        return program.model_proto


def rel_error(model: onnx.ModelProto, x: np.ndarray) -> float:
    want = session(model).run(None, {model.graph.input[0].name: x})
    with torch.no_grad():
        got = import_model(model)(torch.from_numpy(x))
    got = got if isinstance(got, tuple) else (got,)
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        g, w = g.numpy().astype(np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape or not np.abs(w).max() > 0:
            return float("inf")  # a zero output would compare vacuously
        worst = max(worst, float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)))
    return worst


def check(name, build, opset, lowerings, optimized_opsets, folder: Path) -> dict:
    row = {"model": name, "opset": opset}
    t0 = time.perf_counter()
    try:
        model, size = build()
        proto = export(Outputs(randomise(model, heads=True)), size, opset)
    except Exception as exc:  # an export failure is torch's, not ours: report it
        row["export_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return row
    row["ops"] = sorted({n.op_type for n in proto.graph.node})
    x = photo_batch((2, 3, size, size))
    src = folder / f"{name}_op{opset}.onnx"
    onnx.save(proto, src)
    try:
        row["original"] = rel_error(proto, x)
        for lowering in lowerings if opset in optimized_opsets else []:
            dst = folder / f"{name}_op{opset}_{lowering}.onnx"
            report = optimize(src, dst, KSEOptions(), lower_options=LowerOptions(lowering))
            row[f"compressed_{lowering}"] = sum(x.status == "compressed" for x in report.layers)
            row[lowering] = rel_error(onnx.load(dst), x)
    except KSEError as exc:
        row["refused"] = str(exc)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def verdict(row, lowerings) -> str:
    if "export_error" in row:
        return f"export failed ({row['export_error'][:80]})"
    if "refused" in row:
        return f"REFUSED: {row['refused'][:160]}"
    errors = [row["original"]] + [row[lowering] for lowering in lowerings if lowering in row]
    ok = all(e < TOLERANCE for e in errors)
    return ("ok  " if ok else "FAIL") + "  " + "  ".join(f"{e:.1e}" for e in errors)


def main(argv=None) -> int:
    torch.set_num_threads(1)
    torch.backends.mha.set_fastpath_enabled(False)  # the legacy exporter cannot export it
    builders = _builders()
    parser = common.parser(__doc__)
    parser.add_argument("--opsets", default="13,17", help="comma-separated opsets (18+: dynamo)")
    parser.add_argument("--models", default=",".join(builders), help="comma-separated names")
    parser.add_argument("--lowerings", default="compact", help="optimize forms to check")
    parser.add_argument("--optimize-opsets", default="17",
                        help="opsets whose exports are also optimized and checked (the KSE "
                             "analysis dominates the run time)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    opsets = [int(v) for v in args.opsets.split(",")]
    lowerings = [v for v in args.lowerings.split(",") if v]
    rows, failed = [], 0
    print(f"relative error importer vs onnxruntime: original, {', '.join(lowerings)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for opset in opsets:
                row = check(name, builders[name], opset, lowerings,
                            [int(v) for v in args.optimize_opsets.split(",") if v], Path(tmp))
                rows.append(row)
                text = verdict(row, lowerings)
                failed += not text.startswith("ok")
                print(f"{name:30s} opset {opset:2d}  {text}  ({row.get('seconds', 0)} s)",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"{len(rows) - failed} of {len(rows)} exports imported within {TOLERANCE:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
