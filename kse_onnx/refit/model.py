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

import numpy as np
import onnx
import torch

from .. import progress
from ..analysis.plan import LayerPlan
from ..errors import ModelError, first_line
from ..graph.blocks import removable_blocks
from ..onnx_torch.held import release
from ..options import RefitOptions
from .block_fit import fit_block
from .classifier_fit import fit_classifier
from .context import as_tensor, refit_context
from .conv_fit import fit_conv
from .graph_walk import node_names
from .layer import SharedConv
from .result import RefitResult
from .writer import refitted_model


def refit_model(model: onnx.ModelProto, plans: dict[str, LayerPlan], x: np.ndarray,
                options: RefitOptions, log=None, quiet: bool = False,
                teacher_constants: dict | None = None, held: int = 0,
                skipped_blocks=()) -> RefitResult:
    """Refit the compressed layers of ``plans`` (changed in place) from calibration
    inputs ``x``, whose last ``held`` images are held out: fitted on none, they judge
    every step (:mod:`.holdout`). The result's ``model`` is ``model`` with the refitted
    biases (and classifier), to be lowered with the changed plans. Progress: a bar on a terminal,
    else a ``log`` line per conv; nothing when ``quiet``. ``teacher_constants`` (name ->
    array) replace constants of ``model`` in the teacher only (a latency budget's
    masked filters: the teacher is the unmasked original). ``skipped_blocks``: residual
    blocks (Add node names, :mod:`..graph.blocks`) the student lacks (``--budget-blocks``):
    the teacher runs them, the student passes each one's shortcut on, so every later
    layer is fitted to the original's values, making up for them."""
    log = (lambda line: None) if quiet else (log or _stderr)
    skipped = _skipped_nodes(model, skipped_blocks)
    names = node_names(model)
    plans = {n: p for n, p in plans.items()
             if not any(names[i] == n for i in skipped)}  # the skipped blocks' Convs
    refit = Refit(model, plans, x, options, log, quiet, teacher_constants, held, skipped)
    with refit.ctx.runner:  # the disk folder goes on success, error and Ctrl-C alike
        return refit.run()


def _skipped_nodes(model: onnx.ModelProto, blocks) -> dict[int, str | None]:
    """Node index -> the student value it passes on (a block's Add: its shortcut; the
    Relu after it: the Add's output), or None (the branch: nothing), for every node of
    the residual blocks named ``blocks``."""
    if not blocks:
        return {}
    found = {b.name: b for b in removable_blocks(model)}
    missing = sorted(set(blocks) - set(found))
    if missing:
        raise ModelError(f"refit: {missing[0]!r} is not a removable residual block")
    nodes = list(model.graph.node)
    out: dict[int, str | None] = {}
    ends: dict[int, str] = {}
    for block in (found[name] for name in blocks):
        for i, node in enumerate(nodes):
            if node.name == block.name:
                ends[i] = block.shortcut
            elif node.name in block.nodes and node.output and node.output[0] == block.output:
                ends[i] = node.input[0]  # the Relu after the Add
            elif node.name in block.nodes:
                out[i] = None  # the branch (of a block nested in another's too)
    for i, source in ends.items():
        out.setdefault(i, source)
    return out


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Refit:
    """The fitting policy: teacher and student walked side by side over the calibration
    images, each compressed Conv fitted as the walk reaches it (:mod:`.conv_fit`), each
    block at its cut (:mod:`.block_fit`), the classifier at its Gemm
    (:mod:`.classifier_fit`); then the refitted model written (:mod:`.writer`)."""

    def __init__(self, model: onnx.ModelProto, plans: dict[str, LayerPlan], x: np.ndarray,
                 options: RefitOptions, log, quiet: bool = False,
                 teacher_constants: dict | None = None, held: int = 0,
                 skipped: dict[int, str | None] | None = None):
        self.ctx = refit_context(model, plans, x, options, held)
        self.skipped = skipped or {}  # node -> the student value it passes on, or None
        self.log, self.quiet = log, quiet
        self.teacher_constants = {k: as_tensor(v) for k, v in (teacher_constants or {}).items()}
        self.result = RefitResult(options.refit, len(x), held_out=held)
        self.convs: dict[int, SharedConv] = {}
        self.classifier: tuple[int, dict] | None = None  # (Gemm index, refitted values)

    def run(self) -> RefitResult:
        started = time.perf_counter()
        ctx, runner = self.ctx, self.ctx.runner
        nodes = ctx.model.graph.node
        teacher = {ctx.input: ctx.x, **self.teacher_constants}
        student = {ctx.input: ctx.x}
        remaining = dict(ctx.walk.consumers)
        keep = {o.name for o in ctx.model.graph.output}
        cuts = set(ctx.walk.cuts) if ctx.options.refit == "block" else set()
        block_start, block_input = 0, ctx.input
        keep.add(block_input)
        total = len(ctx.plans)
        bar = progress.bar(total, "refit", unit="conv", quiet=self.quiet)  # else a line per conv
        with torch.no_grad():
            for pos, i in enumerate(ctx.walk.order):
                node = nodes[i]
                same = all(student.get(n) is teacher.get(n) for n in node.input if n)
                try:
                    t_out = runner.run(i, teacher, student, remaining, keep)
                except (RuntimeError, ValueError, IndexError) as exc:
                    raise ModelError(f"node {ctx.names[i]!r} ({node.op_type}) fails on the "
                                     f"calibration images: {first_line(exc)}") from exc
                for name, value in zip(node.output, t_out, strict=False):
                    teacher[name] = value
                # the teacher's inputs no later node reads go before the student runs: a
                # residual Add would otherwise hold both models' inputs and outputs at once
                # (2.5 GB at ResNet-50's first stage)
                for name in node.input:
                    if remaining.get(name, 2) <= 1 and name not in keep:
                        teacher.pop(name, None)
                if i in self.skipped:  # a removed block: the student passes x on
                    source = self.skipped[i]
                    s_out = (student[source],) if source else ()
                elif i in ctx.plans:
                    s_out = (self._fit_conv(i, teacher, student, bar),)
                elif i in ctx.classifiers:
                    s_args = [ctx.lookup(student, n) for n in node.input]
                    s_out = (runner.keep(self._fit_classifier(i, s_args, teacher)),)
                elif same:
                    s_out = t_out  # the student equals the teacher up to here
                else:
                    s_out = runner.run(i, student, teacher, remaining, keep)
                for name, value in zip(node.output, s_out, strict=False):
                    student[name] = value
                if pos in cuts:
                    members = ctx.walk.order[block_start:pos + 1]
                    out, block = fit_block(ctx, members, block_input, self.convs, teacher,
                                           student)
                    if block is not None:
                        student[node.output[0]] = out
                        self.result.blocks.append(block)
                        self.log(f"refit: block ending at {block['last']}: relative error "
                                 f"{block['error_before']:.4f} -> {block['error_after']:.4f}")
                    keep.discard(block_input)
                    release([block_input], remaining, keep, teacher, student)
                    block_start, block_input = pos + 1, node.output[0]
                    keep.add(block_input)
                for name in node.input:
                    if name in remaining:
                        remaining[name] -= 1
                release(node.input, remaining, keep, teacher, student)
                release(node.output, remaining, keep, teacher, student)  # read by no walked node
        bar.close()
        self.result.model = refitted_model(ctx.model, ctx.names, self.convs, self.classifier)
        self.result.seconds = time.perf_counter() - started
        return self.result

    def _fit_conv(self, i: int, teacher: dict, student: dict, bar) -> torch.Tensor:
        """Compressed Conv ``i`` fitted (:func:`.conv_fit.fit_conv`), its progress shown."""
        ctx = self.ctx
        s_args = [ctx.lookup(student, n, raw=True) for n in ctx.model.graph.node[i].input]
        conv, fit, out = fit_conv(ctx, i, s_args, teacher, student)
        self.convs[i] = conv
        self.result.layers.append(fit)
        if progress.interactive():
            bar.update(1)
        else:
            self.log(f"refit: {len(self.convs)}/{len(ctx.plans)} {ctx.names[i]}: relative "
                     f"error {fit.error_before:.4f} -> {fit.error_after:.4f} "
                     f"({fit.seconds:.1f} s)")
        return out

    def _fit_classifier(self, i: int, s_args: list, teacher: dict) -> torch.Tensor:
        """Gemm ``i`` refitted (:func:`.classifier_fit.fit_classifier`); only the first
        classifier kept counts."""
        fit = fit_classifier(self.ctx, i, s_args, teacher)
        if self.classifier is not None or fit.report is None:
            return fit.old
        self.result.classifier = fit.report
        if not fit.values:
            return fit.old
        self.classifier = (i, fit.values)
        return fit.new
