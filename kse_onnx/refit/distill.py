"""``--refit distill``: after the layer-wise refit, a short distillation of the whole
compressed model from the original on the calibration images alone (docs/refit.md).

No labels. The student is the lowered compressed model run in torch by the fine-tuning
importer: every float weight is free except the sharing (each compressed Conv's weight
is ``table[codes]``, the all-zero kernels of pruned and alignment channels held at zero)
and what the lowering removed (pruned channels are not in the graph). The teacher is the
original in onnxruntime, on the same augmented batch (random shift and horizontal flip:
both models see the same image, so the pair needs no labels to stay consistent).

Loss: the outputs' term, for logits (one 2-D output) ``T^2 KL(softmax(t/T) ||
softmax(s/T))``, otherwise per output and per channel the squared error over that
channel's variance in the teacher (a channel of small spread counts like a large one);
averaged with the features' term, the same normalised error on the input of every
compressed Conv (:func:`matched_features`): a thousand images give ten numbers each at
the logits, and thousands each inside the network. Adam, a one-epoch linear warm-up,
cosine decay; each tensor's rate scaled by its RMS, and for a network deeper than the
ResNet-20 the default was chosen on, by ``REFERENCE_DEPTH / depth`` (:func:`depth_scale`).

Held-out judgement: the held-out images (:mod:`.holdout`) are measured before training
and after every epoch: for logits by the KL divergence from the teacher at T = 1, an
epoch counting only if its top-1 agreement is no lower than the refit's (agreement
alone moves in steps too coarse to choose an epoch by; the KL alone can fall while more
predictions flip: :func:`improves`), otherwise by the mean per-channel normalised error.
The best state is kept; when no epoch beats the start, the refitted model is returned
unchanged and the report says so.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .. import progress
from ..errors import ModelError
from ..finetune.epochs import augment
from ..finetune.importer import import_model
from ..finetune.losses import Teacher, with_outputs
from ..graph.core import import_graph
from ..graph.count import weighted_depth
from ..graph.export import settings_of
from ..graph.groups import residual_groups
from ..graph.inputs import fixed_batch, unbatched, whole_batches
from ..graph.settings import RecordedSettings
from ..options import DataOptions, RefitOptions
from .context import refuse_distill_unbatched

TEMPERATURE = 2.0
CLIP_NORM = 5.0
EVAL_BATCH = 128
EVAL_BYTES = 16 * 2**20
SHIFT_DIVISOR = 16  # augmentation: random shift of up to width / SHIFT_DIVISOR pixels
REFERENCE_DEPTH = 20  # weighted layers of the Fashion-MNIST ResNet-20 the default rate fits


def depth_scale(teacher: onnx.ModelProto) -> tuple[int, float]:
    """(weighted depth of ``teacher``, the factor on the distillation rate:
    ``min(1, REFERENCE_DEPTH / depth)``). Adam moves every tensor by about its rate at
    each step, and in a residual network the blocks' changes add up along the stream,
    so the output moves by about depth x rate: at the ResNet-20's rate of 1e-2 the
    authors' ResNet-56 (depth 56) lost a third of its top-1 agreement with the original
    in the first epoch and no epoch of 32 won it back, where 3.6e-3 (the factor 0.36)
    gained (docs/refit.md, "The rate and the depth")."""
    depth = weighted_depth(teacher)
    return depth, min(1.0, REFERENCE_DEPTH / depth) if depth else 1.0


def distill(student: onnx.ModelProto, teacher: onnx.ModelProto, x: np.ndarray, held: int,
            options: RefitOptions, log, quiet: bool = False) -> tuple[onnx.ModelProto, dict]:
    """(the better of ``student`` and its distilled copy on the held-out images, the
    report). ``x``: calibration images, the last ``held`` of them held out (none: judged
    on the fitted ones)."""
    started = time.perf_counter()
    if unbatched(student):
        refuse_distill_unbatched(options.refit)
    module = import_model(student, "distill")
    module.eval()  # BatchNormalization uses stored statistics either way
    fixed = fixed_batch(student)  # the graph's own batch: every run takes exactly that many
    fitted = whole_batches(x[:len(x) - held], fixed)
    judged = whole_batches(x[len(x) - held:], fixed) if held else fitted
    if not len(fitted) or not len(judged):
        raise ModelError(f"distill: too few calibration images for the model's fixed batch "
                         f"of {fixed}")
    # images per evaluation run: at most EVAL_BATCH and EVAL_BYTES of them (onnxruntime
    # holds a run's activations: 128 images at 640x640 would take gigabytes)
    step_of = fixed or max(1, min(EVAL_BATCH, EVAL_BYTES // max(1, x[:1].nbytes)))
    features = matched_features(module, teacher, fitted[:fixed or 1], step_of)
    module.capture = {name for name, _ in features}
    teacher_run = Teacher(with_outputs(teacher, [name for name, _ in features]),
                           torch.get_num_threads(), step_of)
    outputs = len(module.outputs)
    t_judged = teacher_run(judged)[:outputs]
    logits = len(t_judged) == 1 and t_judged[0].ndim == 2 and t_judged[0].shape[1] >= 2
    sample = teacher_run(whole_batches(fitted[:256], fixed))
    variances = _channel_variances(sample[:outputs])
    feature_variances = _channel_variances([v[:, index] if index is not None else v for v, (
        _, index) in zip(sample[outputs:], features, strict=True)])
    measure = "KL divergence from the original" if logits else "normalised error"

    def held_error() -> tuple[float, float]:
        """(the judged error, top-1 agreement for logits)."""
        s = _run(module, judged, step_of)
        if logits:
            agree = float(np.mean(s[0].argmax(1) == t_judged[0].argmax(1)))
            return float(_kd(torch.from_numpy(s[0]), torch.from_numpy(t_judged[0]), 1.0)), agree
        return float(_normalised([torch.from_numpy(v) for v in s],
                                 [torch.from_numpy(v) for v in t_judged], variances)), 0.0

    def loss_of(images: np.ndarray) -> torch.Tensor:
        targets = [torch.from_numpy(v) for v in teacher_run(images)]
        out = module(torch.from_numpy(images))
        out = list(out) if isinstance(out, tuple) else [out]
        match = (_kd(out[0], targets[0], TEMPERATURE) if logits
                 else _normalised(out, targets[:outputs], variances))
        if not features:
            return match
        got = [module.captured[name] for name, _ in features]
        want = [t[:, torch.from_numpy(index)] if index is not None else t
                for t, (_, index) in zip(targets[outputs:], features, strict=True)]
        return 0.5 * (match + _normalised(got, want, feature_variances))

    before = best = held_error()
    best_state, best_epoch = None, 0
    epochs = options.refit_distill_epochs
    batch = fixed or min(options.refit_distill_batch, len(fitted))
    steps = max(1, len(fitted) // batch)
    rng = np.random.default_rng(options.refit_seed)
    shift = max(1, fitted.shape[-1] // SHIFT_DIVISOR) if fitted.ndim == 4 else 0
    augmentation = DataOptions(pad_crop=shift, flip=fitted.ndim == 4)
    depth, rate_scale = depth_scale(teacher)
    rate = options.refit_distill_lr * rate_scale
    params = [p for p in module.parameters() if p.requires_grad]
    # Adam moves every value by about its rate: each tensor's rate is relative to its own
    # scale (its RMS), as in the block mode, so a small layer is not moved more than a wide one
    scales = [float(p.detach().square().mean().sqrt()) or 1.0 for p in params]
    optimizer = torch.optim.Adam([{"params": [p], "scale": s}
                                  for p, s in zip(params, scales, strict=True)])
    total = epochs * steps
    bar = progress.bar(total, "distill", unit="step", quiet=quiet, lines=False)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(fitted))
        losses = []
        for step in range(steps):
            k = epoch * steps + step
            warm = min(1.0, (k + 1) / steps)  # one epoch of linear warm-up, then cosine
            lr = rate * warm * 0.5 * (1 + np.cos(np.pi * k / total))
            for group in optimizer.param_groups:
                group["lr"] = lr * group["scale"]
            images = augment(fitted[order[step * batch:(step + 1) * batch]], augmentation,
                             rng) if shift else fitted[order[step * batch:(step + 1) * batch]]
            if options.refit_distill_mixup and len(images) > 1:
                images = mixup(images, rng)
            with torch.enable_grad():
                loss = loss_of(images)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
                optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
        error = held_error()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "held_out": error[0], **({"agreement": error[1]} if logits else {})})
        if not quiet and not progress.interactive():
            log(f"distill: epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4g}, "
                f"held-out {measure} {error[0]:.4f}")
        if improves(error, best, before):
            best, best_epoch = error, epoch + 1
            best_state = copy.deepcopy(module.state_dict())
    bar.close()
    report = {"epochs": epochs, "images": len(fitted), "held_out": held, "measure": measure,
              "depth": depth, "rate": rate,
              "held_before": before[0], "held_after": best[0], "history": history,
              "features": len(features),
              **({"agreement_before": before[1], "agreement_after": best[1]} if logits else {}),
              "kept": f"epoch {best_epoch}" if best_state is not None
              else "the refit alone (no epoch improved on the held-out images)",
              "seconds": round(time.perf_counter() - started, 3)}
    if best_state is None:
        return student, report
    module.load_state_dict(best_state)
    return module.export(), report


def mixup(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image blended with another of the batch, ``w x_i + (1 - w) x_j``, one weight
    ``w ~ U(0, 1)`` per image: new points between the calibration images, labelled by the
    teacher (no labels are needed, so no blend of labels either)."""
    partner = rng.permutation(len(images))
    w = rng.random(len(images)).astype(np.float32).reshape(-1, *[1] * (images.ndim - 1))
    return np.ascontiguousarray(w * images + (1 - w) * images[partner])


def improves(error: tuple[float, float], best: tuple[float, float],
             start: tuple[float, float]) -> bool:
    """Whether an epoch's held-out ``(error, agreement)`` beats the best so far: a lower
    error (strictly: a tie keeps the earlier state), and for logits a top-1 agreement no
    lower than the refit's. Why both: on the authors' ResNet-56 pruned to R = 0.6, an
    epoch lowered the held-out KL from 1.128 to 1.066 while test accuracy fell from
    71.1% to 61.7%; the KL alone can fall while more predictions flip."""
    return error[0] < best[0] and error[1] >= start[1]


def _run(module, x: np.ndarray, step: int = EVAL_BATCH) -> list[np.ndarray]:
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), step):
            out = module(torch.from_numpy(np.ascontiguousarray(x[i:i + step])))
            outs.append([o.numpy() for o in (out if isinstance(out, tuple) else (out,))])
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def matched_features(module, teacher: onnx.ModelProto, one: np.ndarray,
                     step: int = EVAL_BATCH) -> list:
    """The inner tensors matched besides the outputs: the input of every compressed Conv,
    as ``(name, kept channels of the teacher's tensor or None for all)``. A latency
    budget removed channels from some of them: those kept are read from the recorded
    settings (a layer's kept input channels, a stream's kept classes); a tensor whose
    channels cannot be matched that way is left out."""
    settings = settings_of(module.model) or RecordedSettings()
    compressed = settings.compressed
    graph = import_graph(teacher)
    kept: dict[str, np.ndarray] = {}
    streams = settings.budget_streams or {}
    for group in residual_groups(graph) if streams else []:
        if group.key in streams:
            for tensor in group.channels:
                kept[tensor] = group.kept(tensor, streams[group.key])
    names = []
    for node in graph.nodes:
        if node.op == "Conv" and node.name in compressed and node.inputs:
            name = node.inputs[0].name
            layers = settings.budget_layers or {}
            if name not in kept and node.name in layers:
                kept[name] = np.asarray(layers[node.name], np.int64)
            if name not in names:
                names.append(name)
    produced = {o for n in module.model.graph.node for o in n.output}
    names = [n for n in names if n in produced]
    module.capture = set(names)
    with torch.no_grad():
        module(torch.from_numpy(np.ascontiguousarray(one)))
    shapes = {n: tuple(module.captured[n].shape) for n in names}
    module.capture = set()
    t_shapes = {}
    for value, name in zip(Teacher(with_outputs(teacher, names), 1, step)(one)[len(
            teacher.graph.output):], names, strict=True):
        t_shapes[name] = value.shape
    out = []
    for name in names:
        mine, theirs = shapes[name], t_shapes[name]
        if len(mine) < 2 or mine[2:] != theirs[2:]:
            continue
        if mine[1] == theirs[1]:
            out.append((name, None))
        elif name in kept and len(kept[name]) == mine[1] and kept[name].max() < theirs[1]:
            out.append((name, kept[name]))
    return out


def _kd(student: torch.Tensor, teacher: torch.Tensor, t: float = TEMPERATURE) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1),
                    reduction="batchmean") * t * t


VARIANCE_FLOOR = 1e-2


def _channel_variances(outputs: list[np.ndarray]) -> list[torch.Tensor]:
    """Per output, the teacher's variance of each channel (axis 1; the last axis of a
    2-D output), broadcastable against the output; floored at VARIANCE_FLOOR times the
    tensor's mean channel variance. Why that floor: after a ReLU a channel the teacher
    never turns on has variance 0; divided by a floor of 1e-6 of the mean (the first
    version), any small output of the student there weighed a million times a live
    channel. On the authors' ResNet-56 pruned to R = 0.6, 14 of its 54 matched tensors
    hold such channels, the first epoch's loss was 9.1 against 1.2 after, and no epoch
    beat the layer-wise refit on the held-out images."""
    out = []
    for value in outputs:
        v = value.astype(np.float64)
        axes = tuple(a for a in range(v.ndim) if a != 1) if v.ndim > 1 else (0,)
        var = v.var(axis=axes, keepdims=True)
        floor = max(float(var.mean()), 1e-12) * VARIANCE_FLOOR
        out.append(torch.from_numpy(np.maximum(var, floor).astype(np.float32)))
    return out


def _normalised(got: list[torch.Tensor], want: list[torch.Tensor],
                variances: list[torch.Tensor]) -> torch.Tensor:
    """Mean over outputs of the mean over channels of (squared error / channel variance)."""
    terms = [((g - w).square() / v).mean() for g, w, v in zip(got, want, variances,
                                                               strict=True)]
    return torch.stack(terms).mean()
