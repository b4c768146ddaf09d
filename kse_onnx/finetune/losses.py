"""What the student matches during fine-tuning (``--loss``), chosen once per run.

- ``kd``: ``T^2 KL(softmax(t / T) || softmax(s / T))`` on the first output (classifier
  logits, classes on axis 1);
- ``mse``: ``mean_k mean((s_k - t_k)^2) / var(t_k)`` over every graph output ``k``;
- ``features``: the same over the outputs of the compressed Convs (the Conv node names
  kse-onnx records in ``compressed_layers``; lowering keeps their output tensor names, so
  the teacher's tensor of the same name is the target), averaged with the ``mse`` term of
  the graph outputs (the Convs alone leave the error of the layers between them, and of
  the head, unchecked); no labels or output type needed;
- ``auto``: ``kd`` for one 2-D output with at least two columns (logits), ``mse`` otherwise.

Each ``var(t_k)`` is the teacher's variance on a fixed sample of the training inputs (the
first 256), so the terms weigh alike whatever their scale. With labels, cross-entropy
``w CE + (1 - w) matching`` is added only when the first output is a classifier's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..graph.export import settings_of
from ..options import FinetuneOptions
from ..runtime.ort import session

SAMPLE = 256
CHUNK = 32


def looks_like_logits(outputs: list[np.ndarray]) -> bool:
    return len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] >= 2


def feature_names(student: onnx.ModelProto, teacher: onnx.ModelProto) -> list[str]:
    """Output tensors of the compressed Convs, present under the same name in both."""
    compressed = (settings_of(student) or {}).get("compressed_layers", [])
    if not compressed:
        raise ModelError("--loss features: the model records no compressed Convs "
                         "(was it written by kse-onnx optimize?); use --loss mse")
    conv_outputs = {n.name: n.output[0] for n in teacher.graph.node if n.op_type == "Conv"}
    produced = {o for n in student.graph.node for o in n.output}
    names = [conv_outputs[c] for c in compressed
             if c in conv_outputs and conv_outputs[c] in produced]
    if not names:
        raise ModelError("--loss features: none of the compressed Convs "
                         f"{compressed[:3]} is found in the teacher; use --loss mse")
    return names


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``model`` that also outputs the tensors ``names``."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    present = {o.name for o in tapped.graph.output}
    for name in names:
        if name not in present:
            tapped.graph.output.append(onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    return tapped


@dataclass
class Objective:
    """The chosen loss: ``kind``, the tensors matched (graph outputs or Conv outputs, by
    name) with their teacher variances, and whether labels add a cross-entropy term."""

    kind: str
    opts: FinetuneOptions
    outputs: list[str]
    features: list[str] = field(default_factory=list)
    variances: list[float] = field(default_factory=list)
    classifier: bool = False
    teacher: object = None  # onnxruntime session: graph outputs, then the features

    def describe(self) -> str:
        what = {"kd": "softened softmax of the logits",
                "mse": f"{len(self.outputs)} output(s), each / the teacher's variance",
                "features": f"{len(self.features)} compressed Conv output(s) and "
                            f"{len(self.outputs)} output(s), each / the teacher's "
                            "variance"}[self.kind]
        return f"{self.kind} ({what})"

    def targets(self, x: np.ndarray) -> list[np.ndarray]:
        return self.teacher.run(None, {self.teacher.get_inputs()[0].name: x})

    def loss(self, model, module, x: torch.Tensor, targets: list[np.ndarray], labels):
        out = model(x)
        out = out if isinstance(out, tuple) else (out,)
        t = [torch.from_numpy(v) for v in targets]
        if self.kind == "kd":
            match = kd_loss(out[0], t[0], self.opts.temperature)
        elif self.kind == "mse":
            match = _normalised(out, t[:len(self.outputs)], self.variances)
        else:  # the graph outputs' term and the features' term weigh alike
            k = len(self.outputs)
            got = [module.captured[name] for name in self.features]
            match = 0.5 * (_normalised(out, t[:k], self.variances[:k])
                           + _normalised(got, t[k:], self.variances[k:]))
        if labels is None or not self.classifier:
            return match
        w = self.opts.label_weight
        return w * F.cross_entropy(out[0], labels) + (1 - w) * match


def kd_loss(student, teacher, temperature: float):
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1),
                    reduction="batchmean") * t * t


def _normalised(got, want, variances):
    terms = [F.mse_loss(g, w) / v for g, w, v in zip(got, want, variances, strict=True)]
    return torch.stack(terms).mean()


def plan(opts: FinetuneOptions, student: onnx.ModelProto, teacher: onnx.ModelProto,
         module, x: np.ndarray, log) -> Objective:
    """The Objective of ``opts.loss`` for this model pair, its teacher session built and its
    variances measured on the first inputs of ``x``; says which loss it picked."""
    outputs = [o.name for o in teacher.graph.output]
    sample = np.ascontiguousarray(x[:SAMPLE])
    plain = session(teacher)
    first = plain.run(None, {plain.get_inputs()[0].name: sample[:2]})
    classifier = looks_like_logits(first)
    kind = opts.loss
    if kind == "auto":
        kind = "kd" if classifier else "mse"
    if kind == "kd" and not classifier:
        raise ModelError(f"--loss kd needs one 2-D logits output; the teacher has "
                         f"{len(first)} output(s) of shape(s) {[v.shape for v in first]}; "
                         "use --loss mse or features")
    objective = Objective(kind, opts, outputs, classifier=classifier, teacher=plain)
    if kind == "mse":
        objective.variances = _variances(objective, sample, 0)
    elif kind == "features":
        names = [n for n in feature_names(student, teacher) if n not in outputs]
        if not names:  # every compressed Conv writes a graph output: that is mse
            raise ModelError("--loss features: the compressed Convs' outputs are the "
                             "graph outputs; use --loss mse")
        objective.teacher = session(with_outputs(teacher, names))
        targets = objective.targets(sample[:2])[len(outputs):]
        module.capture = set(names)
        with torch.no_grad():
            module(torch.from_numpy(sample[:2]))
        kept = [n for n, t in zip(names, targets, strict=True)
                if tuple(module.captured[n].shape) == t.shape]
        if len(kept) < len(names):
            log(f"--loss features: {len(names) - len(kept)} Conv output(s) differ in shape "
                "between student and teacher (pruned channels) and are not matched")
        if not kept:
            raise ModelError("--loss features: no compressed Conv output has the same shape "
                             "in student and teacher; use --loss mse")
        objective.features = kept
        module.capture = set(kept)
        objective.teacher = session(with_outputs(teacher, kept))
        objective.variances = _variances(objective, sample, 0)
    note = " (auto: one 2-D logits output)" if opts.loss == "auto" and kind == "kd" else \
        " (auto: not a single 2-D logits output)" if opts.loss == "auto" else ""
    log(f"loss: {objective.describe()}{note}")
    return objective


def _variances(objective: Objective, x: np.ndarray, first: int) -> list[float]:
    """Variance of each teacher target from index ``first`` on, over ``x``, accumulated
    chunk by chunk in float64 (feature maps of many images need not fit at once)."""
    count, total, squares = 0, None, None
    for i in range(0, len(x), CHUNK):
        targets = [t.astype(np.float64) for t in objective.targets(x[i:i + CHUNK])[first:]]
        sums = np.array([t.sum() for t in targets])
        sq = np.array([(t * t).sum() for t in targets])
        total = sums if total is None else total + sums
        squares = sq if squares is None else squares + sq
        count += np.array([t.size for t in targets])
    mean = total / count
    return [max(float(v), 1e-12) for v in squares / count - mean * mean]
