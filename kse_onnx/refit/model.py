"""Post-training refit of a whole model: teacher and student run side by side, node by
node, over the calibration images (docs/refit.md).

The teacher is the original model. The student is the same graph with each compressed
Conv's weight replaced by its shared kernels (``W_hat``); it is refitted as it goes, so
every Conv is fitted on the activations of the model refitted so far and errors do not
accumulate. Per compressed Conv, in the walk's order (:mod:`.graph_walk`):
- ``ls``: least squares of its shared kernels and bias (:mod:`.normal`), the target
  being the teacher's output of that Conv or, when the Conv feeds a residual Add, the
  teacher's Add output minus the student's other Add inputs (residual-aware);
- ``act``: then a gradient fit of the same values to the teacher's output after the
  activation that follows (through the Add when there is one);
- ``block``: after the least squares of each Conv, a joint gradient fit of all the
  Convs between two cuts of the graph (a residual block) to the teacher's block output.
Last, with ``refit_classifier``, the final Gemm is refitted by least squares to the
teacher's logits. Codes, pruned channels and the sharing never change.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .. import progress
from ..analysis.plan import LayerPlan
from ..errors import ModelError, OptionError, first_line
from ..finetune.importer import constant_value, refuse_unmapped
from ..graph.classifier import classifier_gemms
from ..graph.inputs import fixed_batch
from ..graph.walk import default_opset
from ..options import RefitOptions
from .graph_walk import node_names, static_nodes, walk
from .holding import (
    Holding,
    chunk_args,
    chunk_images,
    disk_wanted,
    is_held_on_disk,
    runs_by_images,
)
from .layer import (
    ChunkedSum,
    SharedConv,
    attributes,
    fit_segment,
    image_rows,
    relative_error,
    run_node,
)

# Activations over all calibration images above this many bytes (largest tensor, float32)
# are held in float16 between their producer and their last reader, and the operators
# that treat images independently (PER_IMAGE) then run CHUNK images at a time.
HALF_FROM_BYTES = 256 * 2**20
CHUNK = 32
PER_IMAGE = {"Conv", "ConvTranspose", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid",
             "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus", "Add", "Sub", "Mul",
             "Div", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
             "GlobalMaxPool", "Identity", "Dropout"}
# Operators whose output may overwrite their first input, chunk by chunk (same shape).
ELEMENTWISE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "Elu", "Selu", "Softplus", "Add", "Sub", "Mul", "Div"}


@dataclass
class LayerFit:
    name: str
    target: str  # "conv output" or "residual Add"
    solver: str
    error_before: float  # relative error ||y - target|| / ||target|| on the calibration set
    error_after: float
    seconds: float
    act_error_before: float | None = None  # after the activation ("act" mode)
    act_error_after: float | None = None
    held_error_before: float | None = None  # the judged error on the held-out images
    held_error_after: float | None = None


@dataclass
class RefitResult:
    mode: str
    images: int
    held_out: int = 0
    layers: list[LayerFit] = field(default_factory=list)
    blocks: list[dict] = field(default_factory=list)
    classifier: dict | None = None
    seconds: float = 0.0
    model: onnx.ModelProto | None = None  # the original with refitted biases/classifier

    def to_dict(self) -> dict:
        return {"mode": self.mode, "images": self.images, "held_out": self.held_out,
                "seconds": round(self.seconds, 3),
                "layers": [asdict(layer) for layer in self.layers], "blocks": self.blocks,
                "classifier": self.classifier}


def refit_model(model: onnx.ModelProto, plans: dict[str, LayerPlan], x: np.ndarray,
                options: RefitOptions, log=None, quiet: bool = False,
                teacher_constants: dict | None = None, held: int = 0) -> RefitResult:
    """Refit the compressed layers of ``plans`` (changed in place) from calibration
    inputs ``x``, whose last ``held`` images are held out: fitted on none, they judge
    every step (:mod:`.holdout`). The result's ``model`` is ``model`` with the refitted
    biases (and classifier), to be lowered with the changed plans. Progress: a bar on a terminal,
    else a ``log`` line per conv; nothing when ``quiet``. ``teacher_constants`` (name ->
    array) replace constants of ``model`` in the teacher only (a latency budget's
    masked filters: the teacher is the unmasked original)."""
    log = (lambda line: None) if quiet else (log or _stderr)
    refit = _Refit(model, plans, x, options, log)
    refit.quiet = quiet
    refit.fitted = len(x) - held
    refit.result.held_out = held
    refit.teacher_constants = {k: _tensor(v) for k, v in (teacher_constants or {}).items()}
    with refit.holding:  # the disk folder goes on success, error and Ctrl-C alike
        return refit.run()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Refit:
    quiet = False
    fitted = 0  # the first ``fitted`` images are fitted on, the others judge (set by refit_model)

    def __init__(self, model, plans, x, options: RefitOptions, log):
        self.model, self.options, self.log = model, options, log
        graph = model.graph
        inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        if len(inputs) != 1:
            raise ModelError(f"refit needs a model with one input, this one has {len(inputs)}")
        self.input = inputs[0].name
        elem = inputs[0].type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise ModelError(f"input {self.input!r}: refit supports float32 models only")
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != x.ndim or any(d and d != s for d, s in zip(dims[1:], x.shape[1:],
                                                                    strict=False)):
            shown = ["?" if d is None else d for d in dims]
            raise ModelError(f"calibration images of shape {tuple(x.shape[1:])} do not fit "
                             f"input {self.input!r} of shape {shown[1:]}: check "
                             "--resize/--crop and the channels")
        self.x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        self.names = node_names(model)
        self.opset = default_opset(model)
        refuse_unmapped(model.graph, [attributes(n, self.opset) for n in model.graph.node],
                        "refit")
        self.plans = {i: plans[name] for i, name in enumerate(self.names)
                      if name in plans and plans[name].compressed
                      and model.graph.node[i].op_type == "Conv"}
        for i, plan in self.plans.items():
            if plan.w_hat.dtype != np.float32:
                raise ModelError(f"node {self.names[i]!r}: refit supports float32 weights "
                                 f"only, not {plan.w_hat.dtype}")
        with torch.no_grad():
            self.constants = self._constants()
        self.walk = walk(model, set(self.plans))
        largest = _largest_activation(model)
        self.half = len(x) * largest * 4 > HALF_FROM_BYTES
        # activations held in files when they would not fit (holding.py): then every
        # PER_IMAGE node runs CHUNK images at a time, as with float16 holding
        self.holding = Holding(disk_wanted(len(x), largest))
        self.chunk = chunk_images(CHUNK, largest) if self.holding.disk else CHUNK
        # a graph whose input fixes its batch (a Reshape may hold it) runs that many
        # images at a time: every node that reads the images, a chunk at a time
        self.fixed = fixed_batch(model)
        if self.fixed:
            self.chunk = self.fixed
            if len(x) % self.fixed:
                raise ModelError(f"the refit runs the model's fixed batch of {self.fixed} "
                                 f"images at a time: {len(x)} calibration images are not a "
                                 "multiple of it")
            if options.refit == "block":
                raise OptionError("--refit", "block needs a model whose batch is not fixed "
                                  f"(its input fixes {self.fixed}); use act or distill")
        self.classifiers = set(classifier_gemms(model)) if options.refit_classifier else set()
        self.result = RefitResult(options.refit, len(x))
        self.classifier: dict[str, np.ndarray] = {}
        self.convs: dict[int, SharedConv] = {}

    def _constants(self) -> dict[str, torch.Tensor]:
        """Initializers, then every node computed from constants alone."""
        values = {}
        for init in self.model.graph.initializer:
            values[init.name] = _tensor(numpy_helper.to_array(init))
        for i in static_nodes(self.model):
            node = self.model.graph.node[i]
            if node.op_type == "Constant":
                values[node.output[0]] = _tensor(constant_value(node))
                continue
            args = [values[n] if n else None for n in node.input]
            for name, value in zip(node.output, run_node(node, args, self.opset), strict=False):
                values[name] = value
        return values

    def _lookup(self, env, name, raw: bool = False):
        """A tensor of ``env`` (float32 again if it is held in float16, unless ``raw``) or
        a constant."""
        if not name:
            return None
        if name not in env:
            return self.constants[name]
        value = env[name]
        wide = value.dtype == torch.float16 or is_held_on_disk(value)
        return value.float() if wide and not raw else value

    def _run(self, node, env, other=None, remaining=None, keep=()) -> tuple:
        """``node``'s outputs from ``env``, held (:meth:`_hold`). With float16 holding, a
        node that treats images independently runs CHUNK images at a time, so no
        float32 copy of a whole-set tensor is made; an elementwise node whose first input
        no later node reads, and which no other name (in ``env`` or ``other``) holds,
        writes its output over that input."""
        raw = [self._lookup(env, n, raw=True) for n in node.input]
        reuse = None
        chunked = self.half or self.holding.disk
        if chunked and node.op_type in ELEMENTWISE and remaining is not None:
            first = node.input[0]
            value = env.get(first)
            if (value is not None and remaining.get(first, 2) <= 1 and first not in keep
                    and sum(v is value for v in env.values()) == 1
                    and all(v is not value for v in (other or {}).values())):
                reuse = value
        n = len(self.x)
        batch = [name in env and a.dim() >= 1 and a.shape[0] == n
                 for name, a in zip(node.input, raw, strict=True)]
        by_images = self.holding.disk and any(batch) and runs_by_images(
            node.op_type, attributes(node, self.opset), raw, batch)  # Concat, Reshape...
        fixed = self.fixed and any(batch)  # the model's own batch, a chunk at a time
        if fixed and node.op_type in ("Shape", "Size"):  # of one chunk, as the graph sees it
            args = [a[:self.fixed].float() if b else a for a, b in zip(raw, batch, strict=True)]
            return tuple(run_node(node, args, self.opset))
        if not (chunked and node.op_type in PER_IMAGE and any(batch) or by_images or fixed):
            args = [a.float() if a is not None and (a.dtype == torch.float16 or (
                is_held_on_disk(a) and node.op_type != "Shape")) else a for a in raw]
            return tuple(self._keep(v) for v in run_node(node, args, self.opset))
        outs: list[torch.Tensor] = []
        for start in range(0, n, self.chunk):
            args = [a[start:start + self.chunk].float() if b else a for a, b in zip(raw, batch,
                                                                                  strict=True)]
            if by_images:
                args = chunk_args(node.op_type, args, len(args[0]), n)
            for k, value in enumerate(run_node(node, args, self.opset)):
                value = self._hold(value)
                if k == len(outs):  # written in place, chunk by chunk: no list + cat copy
                    outs.append(reuse if k == 0 and reuse is not None
                                and reuse.shape[1:] == value.shape[1:]
                                and reuse.dtype == value.dtype
                                else self.holding.empty((n, *value.shape[1:]), value.dtype))
                if value.dtype != outs[k].dtype:  # a chunk outside float16's range
                    outs[k] = self.holding.widened(outs[k])
                outs[k][start:start + len(value)] = value
        return tuple(outs)

    def _hold(self, value: torch.Tensor) -> torch.Tensor:
        """How an activation is kept until its last reader: float16 when the model's
        activations over all calibration images are large (``HALF_FROM_BYTES``) and its
        values fit float16's range (its rounding, 2^-11 relative, is far below the
        compression error being fitted), else as computed."""
        if (self.half and value.dtype == torch.float32 and value.numel() > 1
                and float(value.abs().max()) < 6e4):
            return value.half()
        return value

    def _keep(self, value: torch.Tensor):
        """A whole-set ``value`` as held (:meth:`_hold`), on disk when holding there."""
        return self.holding.keep(self._hold(value))

    def run(self) -> RefitResult:
        started = time.perf_counter()
        nodes = self.model.graph.node
        teacher = {self.input: self.x, **getattr(self, "teacher_constants", {})}
        student = {self.input: self.x}
        remaining = dict(self.walk.consumers)
        keep = {o.name for o in self.model.graph.output}
        cuts = set(self.walk.cuts) if self.options.refit == "block" else set()
        block_start, block_input = 0, self.input
        keep.add(block_input)
        total = len(self.plans)
        bar = progress.bar(total, "refit", unit="conv", quiet=self.quiet)  # else a line per conv
        with torch.no_grad():
            for pos, i in enumerate(self.walk.order):
                node = nodes[i]
                same = all(student.get(n) is teacher.get(n) for n in node.input if n)
                try:
                    t_out = self._run(node, teacher, student, remaining, keep)
                except (RuntimeError, ValueError, IndexError) as exc:
                    raise ModelError(f"node {self.names[i]!r} ({node.op_type}) fails on the "
                                     f"calibration images: {first_line(exc)}") from exc
                for name, value in zip(node.output, t_out, strict=False):
                    teacher[name] = value
                # the teacher's inputs no later node reads go before the student runs: a
                # residual Add would otherwise hold both models' inputs and outputs at once
                # (2.5 GB at ResNet-50's first stage)
                for name in node.input:
                    if remaining.get(name, 2) <= 1 and name not in keep:
                        teacher.pop(name, None)
                if i in self.plans:
                    s_args = [self._lookup(student, n, raw=True) for n in node.input]
                    s_out = (self._fit_conv(i, s_args, teacher, student),)
                    if progress.interactive():
                        bar.update(1)
                    else:
                        fit = self.result.layers[-1]
                        self.log(f"refit: {len(self.convs)}/{total} {self.names[i]}: relative "
                                 f"error {fit.error_before:.4f} -> {fit.error_after:.4f} "
                                 f"({fit.seconds:.1f} s)")
                elif i in self.classifiers:
                    s_args = [self._lookup(student, n) for n in node.input]
                    s_out = (self._keep(self._fit_classifier(i, s_args, teacher)),)
                elif same:
                    s_out = t_out  # the student equals the teacher up to here
                else:
                    s_out = self._run(node, student, teacher, remaining, keep)
                for name, value in zip(node.output, s_out, strict=False):
                    student[name] = value
                if pos in cuts:
                    self._fit_block(block_start, pos, block_input, teacher, student)
                    keep.discard(block_input)
                    _release([block_input], remaining, keep, teacher, student)
                    block_start, block_input = pos + 1, node.output[0]
                    keep.add(block_input)
                for name in node.input:
                    if name in remaining:
                        remaining[name] -= 1
                _release(node.input, remaining, keep, teacher, student)
        bar.close()
        self.result.model = self._refitted_model()
        self.result.seconds = time.perf_counter() - started
        return self.result

    # -- one compressed Conv ------------------------------------------------------------
    def _fit_conv(self, i, s_args, teacher, student) -> torch.Tensor:
        started = time.perf_counter()
        node = self.model.graph.node[i]
        bias = s_args[2] if len(s_args) > 2 and s_args[2] is not None else None
        bias = None if bias is None else bias.float()
        conv = SharedConv(node, self.plans[i], None if bias is None else bias.numpy(),
                          self.opset)
        self.convs[i] = conv
        x = s_args[0]
        target, kind, others = self._lookup(teacher, node.output[0], raw=True), "conv output", []
        add = self.walk.residual_add.get(i)
        if add is not None:
            others = [n for n in self.model.graph.node[add].input if n != node.output[0]]
            if all(n in student or n in self.constants for n in others):
                target = ChunkedSum([(1, target)] + [
                    term for n in others for term in (
                        (1, self._lookup(teacher, n, raw=True)),
                        (-1, self._lookup(student, n, raw=True)))])
                kind = "residual Add"
            else:
                add, others = None, []
        floor = (self._relu_floor(i, add, others, student)
                 if self.options.refit in ("act", "block", "distill") else None)
        n, k = len(x), self.fitted
        fit_x, fit_target, fit_floor = (image_rows(v, 0, k, n) for v in (x, target, floor))
        held = None
        if k < n:  # the held-out images: error after the activation if one follows
            held = [image_rows(v, k, n, n) for v in (x, target, floor)]

            def judge() -> float:
                plain, act = conv.errors(*held)
                return plain if act is None else act
        # errors measured directly (not from the normal equations, whose float32 sums
        # lose the small differences of a close fit), a chunk of images at a time
        plain, act = conv.errors(fit_x, fit_target, fit_floor)
        fit = LayerFit(self.names[i], kind, "", plain, plain, 0.0, act, act)
        start = (conv.kernels.copy(), conv.bias.copy())
        if held is not None:
            fit.held_error_before = judge()
        fit.solver = conv.least_squares(fit_x, fit_target, self.options.refit_damping,
                                        fit_floor, self.options.refit_rounds,
                                        self.options.refit_positions,
                                        self.options.refit_seed + i,
                                        judge if held is not None else None).solver
        fit.error_after, fit.act_error_after = conv.errors(fit_x, fit_target, fit_floor)
        judged = ("act_error_before", "act_error_after") if floor is not None else (
            "error_before", "error_after")
        if held is not None:
            fit.held_error_after = judge()
            worse = not fit.held_error_after < fit.held_error_before
        else:
            worse = getattr(fit, judged[1]) > getattr(fit, judged[0])
        if worse:  # a guard: keep the clustered kernels
            conv.kernels, conv.bias = start
            fit.solver = ("kept the clustered kernels (no improvement"
                          f"{' on the held-out images' if held is not None else ''})")
            fit.error_after, fit.act_error_after = fit.error_before, fit.act_error_before
            fit.held_error_after = fit.held_error_before
        step = self.chunk if self.chunk < CHUNK else None  # smaller chunks on disk
        out = conv.predict(x, self.holding.empty, step)
        fit.seconds = time.perf_counter() - started
        self.result.layers.append(fit)
        return out

    def _relu_floor(self, i, add, others, student):
        """Where a Relu reads this Conv's output (or its residual Add's), the value of the
        Conv output below which the student's Relu output is 0: minus the student's other
        Add inputs, or 0; None when no Relu follows."""
        nodes = self.model.graph.node
        head = nodes[add].output[0] if add is not None else nodes[i].output[0]
        readers = [j for j in self.walk.order if head in nodes[j].input]
        if len(readers) != 1 or nodes[readers[0]].op_type != "Relu":
            return None
        if not others:
            return torch.zeros(())
        return ChunkedSum([(-1, self._lookup(student, n, raw=True)) for n in others])

    def _named(self, indices: list[int]) -> list[onnx.NodeProto]:
        """Copies of the nodes at ``indices``, each named as kse-onnx names it."""
        out = []
        for i in indices:
            copy = onnx.NodeProto()
            copy.CopyFrom(self.model.graph.node[i])
            copy.name = self.names[i]
            out.append(copy)
        return out

    # -- a block between two cuts --------------------------------------------------------
    def _fit_block(self, first, last, block_input, teacher, student) -> None:
        nodes = self.model.graph.node
        members = self.walk.order[first:last + 1]
        convs = {self.names[j]: self.convs[j] for j in members if j in self.convs}
        if not convs:
            return
        started = time.perf_counter()
        output = nodes[members[-1]].output[0]
        segment = self._named(members)
        inputs = {block_input: self._lookup(student, block_input)}
        with torch.enable_grad():
            before, after = fit_segment(segment, inputs, self.constants, convs, output,
                                        self._lookup(teacher, output), self.options.refit_steps,
                                        self.options.refit_lr, self.options.refit_batch,
                                        self.options.refit_seed + members[0], self.opset,
                                        self.fitted)
        env = dict(inputs)
        for node in segment:
            args = [self._lookup(env, n) for n in node.input]
            outputs = run_node(node, args, self.opset, convs)
            for name, value in zip(node.output, outputs, strict=False):
                env[name] = value
        student[output] = self._keep(env[output])
        self.result.blocks.append({
            "first": self.names[members[0]], "last": self.names[members[-1]],
            "convs": len(convs), "error_before": before, "error_after": after,
            "seconds": round(time.perf_counter() - started, 3)})
        self.log(f"refit: block ending at {self.names[members[-1]]}: relative error "
                 f"{before:.4f} -> {after:.4f}")

    # -- the classifier ---------------------------------------------------------------
    def _fit_classifier(self, i, s_args, teacher) -> torch.Tensor:
        node = self.model.graph.node[i]
        attrs = attributes(node, self.opset)
        alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
        k = self.fitted
        features = s_args[0][:k].double().numpy()
        wanted = self._lookup(teacher, node.output[0])
        target = wanted[:k].double().numpy()
        has_bias = len(node.input) > 2 and bool(node.input[2])
        design = np.hstack([features, np.ones((len(features), 1))]) if has_bias else features
        gram = design.T @ design
        damping = self.options.refit_damping * max(float(np.mean(np.diag(gram))), 1e-30)
        solution = np.linalg.solve(gram + damping * np.eye(len(gram)), design.T @ target)
        judged = slice(k, None) if k < len(wanted) else slice(None)  # held out, or all
        old_out = run_node(node, s_args, self.opset)[0]
        before = relative_error(old_out[judged], wanted[judged])
        weight = solution[:features.shape[1]] / alpha
        if attrs.get("transB", 0):
            weight = weight.T
        new_args = list(s_args)
        new_args[1] = torch.from_numpy(weight.astype(np.float32))
        bias_shape = None
        if has_bias:
            bias_shape = tuple(s_args[2].shape)
            bias = np.broadcast_to(solution[-1] / beta, (target.shape[1],))
            if bias_shape != (target.shape[1],) and bias_shape != (1, target.shape[1]):
                return run_node(node, s_args, self.opset)[0]  # a bias of another shape: left alone
            new_args[2] = torch.from_numpy(bias.reshape(bias_shape).astype(np.float32))
        out = run_node(node, new_args, self.opset)[0]
        after = relative_error(out[judged], wanted[judged])
        if self.classifier:  # one classifier: the first found
            return old_out
        self.result.classifier = {"name": self.names[i], "error_before": before,
                                  "error_after": after, "kept": after < before,
                                  "judged_on": "held-out images" if k < len(wanted)
                                  else "the fitted images"}
        if not after < before:
            return old_out
        self.classifier = {node.input[1]: new_args[1].numpy()}
        if has_bias:
            self.classifier[node.input[2]] = new_args[2].numpy()
        self.classifier_node = i
        return out

    # -- the refitted model ---------------------------------------------------------------
    def _refitted_model(self) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        taken = {t.name for t in model.graph.initializer} | {
            o for n in model.graph.node for o in n.output} | {t.name for t in model.graph.input}

        def add(name: str, values: np.ndarray) -> str:
            unique, k = name, 0
            while unique in taken:
                k += 1
                unique = f"{name}_{k}"
            taken.add(unique)
            model.graph.initializer.append(numpy_helper.from_array(values, unique))
            return unique

        for i, conv in self.convs.items():
            bias = conv.commit()
            node = model.graph.node[i]
            name = add(f"{self.names[i]}_kse_refit_bias", bias)
            if len(node.input) > 2:
                node.input[2] = name
            else:
                node.input.append(name)
        if self.classifier:
            node = model.graph.node[self.classifier_node]
            for position, values in zip((1, 2), self.classifier.values(), strict=False):
                node.input[position] = add(f"{self.names[self.classifier_node]}_kse_refit_"
                                           f"{'weight' if position == 1 else 'bias'}", values)
        return model


def _largest_activation(model: onnx.ModelProto) -> int:
    """Elements per image of the largest Conv output whose shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return 0
    largest = 0
    for info in inferred.graph.value_info:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[1:]):
            largest = max(largest, dims[1].dim_value * dims[2].dim_value * dims[3].dim_value)
    return largest


def _tensor(values: np.ndarray) -> torch.Tensor:
    if values.dtype.kind == "f":
        values = values.astype(np.float32)
    return torch.from_numpy(np.array(values))


def _release(names, remaining, keep, *envs) -> None:
    for name in names:
        if name and remaining.get(name, 1) <= 0 and name not in keep:
            for env in envs:
                env.pop(name, None)
