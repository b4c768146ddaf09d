"""What the student matches during fine-tuning (``--loss``), chosen once per run.

- ``kd``: ``T^2 KL(softmax(t / T) || softmax(s / T))`` on the first output (classifier
  logits, classes on axis 1);
- ``mse``: ``mean_k mean_c mean((s_kc - t_kc)^2) / var(t_kc)`` over every graph output
  ``k`` and its channels ``c`` (axis 1): each channel divided by its own teacher
  variance, so a channel with a small spread (a mask's rare class, a box offset) counts
  as much as a wide one;
- ``features``: the same over the outputs of the compressed Convs (the Conv node names
  kse-onnx records in ``compressed_layers``; lowering keeps their output tensor names, so
  the teacher's tensor of the same name is the target), averaged with the ``mse`` term of
  the graph outputs (the Convs alone leave the error of the layers between them, and of
  the head, unchecked); no labels or output type needed;
- ``auto``: ``kd`` for one 2-D output with at least two columns (logits), ``mse`` otherwise.

Each ``var(t_kc)`` is the teacher's variance of that channel on a fixed sample of the
training inputs (the first 256), so the terms weigh alike whatever their scale; a
channel whose variance is under ``FLOOR`` times its tensor's mean channel variance (a
near-constant channel) is divided by that floor instead, so it cannot dominate. Tensors
of fewer than 2 axes have one variance. With labels, cross-entropy
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
from ..graph.settings import RecordedSettings
from ..options import FinetuneOptions
from ..runtime.ort import session

SAMPLE = 256
CHUNK = 32
FLOOR = 1e-6


def looks_like_logits(outputs: list[np.ndarray]) -> bool:
    return len(outputs) == 1 and outputs[0].ndim == 2 and outputs[0].shape[1] >= 2


def feature_names(student: onnx.ModelProto, teacher: onnx.ModelProto) -> list[str]:
    """Output tensors of the compressed Convs, present under the same name in both."""
    compressed = (settings_of(student) or RecordedSettings()).compressed_layers or ()
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


class Teacher:
    """The original model in onnxruntime: its outputs (the graph's, then the inner tensors
    :func:`with_outputs` added) for images; with ``step``, that many images per run, the
    outputs joined in float32."""

    def __init__(self, model: onnx.ModelProto, threads: int = 1, step: int | None = None):
        self.session = session(model, threads=threads)
        self.input = self.session.get_inputs()[0].name
        self.step = step

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.step is None:  # np.asarray: images held on disk are read a step at a time
            return self.session.run(None, {self.input: np.asarray(x)})
        outs = [self.session.run(None, {self.input: np.asarray(x[i:i + self.step])})
                for i in range(0, len(x), self.step)]
        return [np.concatenate([o[k] for o in outs]).astype(np.float32)
                for k in range(len(outs[0]))]


@dataclass
class Objective:
    """The chosen loss: ``kind``, the tensors matched (graph outputs or Conv outputs, by
    name) with their teacher variances, and whether labels add a cross-entropy term."""

    kind: str
    opts: FinetuneOptions
    outputs: list[str]
    features: list[str] = field(default_factory=list)
    variances: list[torch.Tensor] = field(default_factory=list)  # per channel (axis 1)
    classifier: bool = False
    teacher: Teacher | None = None  # graph outputs, then the features

    def describe(self) -> str:
        what = {"kd": "softened softmax of the logits",
                "mse": f"{len(self.outputs)} output(s), each channel / the teacher's "
                       "variance",
                "features": f"{len(self.features)} compressed Conv output(s) and "
                            f"{len(self.outputs)} output(s), each channel / the "
                            "teacher's variance"}[self.kind]
        return f"{self.kind} ({what})"

    def targets(self, x: np.ndarray) -> list[np.ndarray]:
        return self.teacher(x)

    def loss(self, model, module, x: torch.Tensor, targets: list[np.ndarray], labels):
        out, match = self.match(model, module, x, targets)
        if labels is None or not self.classifier:
            return match
        w = self.opts.label_weight
        return w * F.cross_entropy(out[0], labels) + (1 - w) * match

    def match(self, model, module, x: torch.Tensor, targets: list[np.ndarray]):
        """(student outputs, the matching term without labels) on ``x``."""
        out = model(x)
        out = out if isinstance(out, tuple) else (out,)
        t = [torch.from_numpy(v) for v in targets]
        if self.kind == "kd":
            return out, kd_loss(out[0], t[0], self.opts.temperature)
        if self.kind == "mse":
            return out, normalised(out, t[:len(self.outputs)], self.variances)
        k = len(self.outputs)  # the graph outputs' term and the features' term weigh alike
        got = [module.captured[name] for name in self.features]
        return out, 0.5 * (normalised(out, t[:k], self.variances[:k])
                           + normalised(got, t[k:], self.variances[k:]))


def kd_loss(student, teacher, temperature: float):
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1),
                    reduction="batchmean") * t * t


def normalised(got, want, variances) -> torch.Tensor:
    """``mean_k mean_c mean((got_kc - want_kc)^2) / variances_kc``: the squared error of
    each channel (axis 1) over its own variance, averaged over channels, then tensors."""
    terms = []
    for g, w, v in zip(got, want, variances, strict=True):
        squared = (g - w.to(g.dtype)) ** 2
        if squared.dim() >= 2:
            squared = squared.transpose(0, 1).reshape(squared.shape[1], -1).mean(1)
        terms.append((squared / v).mean())
    return torch.stack(terms).mean()


def plan(opts: FinetuneOptions, student: onnx.ModelProto, teacher: onnx.ModelProto,
         module, x: np.ndarray, log) -> Objective:
    """The Objective of ``opts.loss`` for this model pair, its teacher session built and its
    variances measured on the first inputs of ``x``; says which loss it picked."""
    outputs = [o.name for o in teacher.graph.output]
    sample = np.ascontiguousarray(x[:SAMPLE])
    plain = Teacher(teacher)
    first = plain(sample[:2])
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
        objective.variances = channel_variances(objective, sample, 0)
    elif kind == "features":
        names = [n for n in feature_names(student, teacher) if n not in outputs]
        if not names:  # every compressed Conv writes a graph output: that is mse
            raise ModelError("--loss features: the compressed Convs' outputs are the "
                             "graph outputs; use --loss mse")
        objective.teacher = Teacher(with_outputs(teacher, names))
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
        objective.teacher = Teacher(with_outputs(teacher, kept))
        objective.variances = channel_variances(objective, sample, 0)
    note = " (auto: one 2-D logits output)" if opts.loss == "auto" and kind == "kd" else \
        " (auto: not a single 2-D logits output)" if opts.loss == "auto" else ""
    log(f"loss: {objective.describe()}{note}")
    return objective


def channel_variances(objective: Objective, x: np.ndarray, first: int) -> list[torch.Tensor]:
    """Per-channel (axis 1) variance of each teacher target from index ``first`` on, over
    ``x``, accumulated chunk by chunk in float64 (feature maps of many images need not fit
    at once), floored at ``FLOOR`` times the tensor's mean channel variance."""
    sums, squares, count = None, None, 0
    for i in range(0, len(x), CHUNK):
        targets = objective.targets(x[i:i + CHUNK])[first:]
        s = [_channel_sums(t) for t in targets]
        q = [_channel_sums(np.square(t.astype(np.float64))) for t in targets]
        sums = s if sums is None else [a + b for a, b in zip(sums, s, strict=True)]
        squares = q if squares is None else [a + b for a, b in zip(squares, q, strict=True)]
        count += len(targets[0]) if targets else 0
    out = []
    for total, sq, t in zip(sums, squares, objective.targets(x[:1])[first:], strict=True):
        n = count * (t.size // max(1, t.shape[1] if t.ndim >= 2 else t.size))
        var = np.maximum(sq / max(1, n) - (total / max(1, n)) ** 2, 0.0)
        floor = max(FLOOR * float(var.mean()), 1e-12)
        out.append(torch.tensor(np.maximum(var, floor), dtype=torch.float32))
    return out


def _channel_sums(t: np.ndarray) -> np.ndarray:
    """Sum over every axis but 1 (the channels) in float64; a scalar below 2 axes."""
    t = t.astype(np.float64)
    if t.ndim < 2:
        return np.array(t.sum())
    return t.swapaxes(0, 1).reshape(t.shape[1], -1).sum(1)
