"""One compressed Conv of the refit's walk fitted (docs/refit.md): its target (the
teacher's Conv output, or residual-aware through the Add it feeds), the ReLU floor of
the ``act`` rounds, the least squares, and the guard that keeps the clustered kernels
when the fit does not lower the judged error."""

from __future__ import annotations

import time

import torch

from .context import RefitContext
from .layer import ChunkedSum, SharedConv, image_rows, sampled_bytes, sampled_positions
from .result import LayerFit

# With held-out images to judge by, the fitted images' errors are only reported: they are
# measured on the first REPORT_IMAGES of them (each measurement is a pass over its images;
# on ResNet-50 at 224 with 1,024 images, the two over all of them took a fifth of the refit)
REPORT_IMAGES = 256
# The held-out error is judged on at most this many output positions of the held-out
# images (their relative error over 32,768 positions x N channels moves by far less than
# a fit changes it), read once when their patches take at most JUDGE_BYTES.
JUDGE_POSITIONS = 32_768
JUDGE_BYTES = 512 * 2**20


def fit_conv(ctx: RefitContext, i: int, s_args: list, teacher: dict, student: dict
             ) -> tuple[SharedConv, LayerFit, torch.Tensor]:
    """(the fitted Conv, its report, its output over the images, held as the walk holds)
    of compressed Conv ``i``, from the student's inputs ``s_args``."""
    started = time.perf_counter()
    options = ctx.options
    node = ctx.model.graph.node[i]
    bias = s_args[2] if len(s_args) > 2 and s_args[2] is not None else None
    bias = None if bias is None else bias.float()
    conv = SharedConv(node, ctx.plans[i], None if bias is None else bias.numpy(),
                      ctx.interpreter.opset)
    x = s_args[0]
    target, kind, others = ctx.lookup(teacher, node.output[0], raw=True), "conv output", []
    add = ctx.walk.residual_add.get(i)
    if add is not None:
        others = [n for n in ctx.model.graph.node[add].input if n != node.output[0]]
        if all(n in student or n in ctx.constants for n in others):
            target = ChunkedSum([(1, target)] + [
                term for n in others for term in (
                    (1, residual_term(ctx, teacher, n)),
                    (-1, residual_term(ctx, student, n)))])
            kind = "residual Add"
        else:
            add, others = None, []
    floor = (relu_floor(ctx, i, add, others, student)
             if options.refit in ("act", "block", "distill") else None)
    n, k = len(x), ctx.fitted
    fit_x, fit_target, fit_floor = (image_rows(v, 0, k, n) for v in (x, target, floor))
    held, judge, held_positions = None, None, 0
    if k < n:  # the held-out images: error after the activation if one follows
        held = [image_rows(v, k, n, n) for v in (x, target, floor)]
        judge, held_positions = held_judge(conv, held, options.refit_seed + i)
    # errors measured directly (not from the normal equations, whose float32 sums
    # lose the small differences of a close fit), a chunk of images at a time; with
    # held-out images (which decide), on at most REPORT_IMAGES of the fitted ones
    shown = k if held is None else min(k, REPORT_IMAGES)
    report = [image_rows(v, 0, shown, n) for v in (x, target, floor)]
    plain, act = conv.errors(*report)
    fit = LayerFit(ctx.names[i], kind, "", plain, plain, 0.0, act, act, error_images=shown,
                   held_positions=held_positions)
    start = (conv.kernels.copy(), conv.bias.copy())
    if held is not None:
        fit.held_error_before = judge()
    fit.solver = conv.least_squares(fit_x, fit_target, options.refit_damping,
                                    fit_floor, options.refit_rounds,
                                    options.refit_positions,
                                    options.refit_seed + i,
                                    judge).solver
    fit.error_after, fit.act_error_after = conv.errors(*report)
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
    out = conv.predict(x, ctx.runner.holding.empty, ctx.runner.predict_step)
    fit.seconds = time.perf_counter() - started
    return conv, fit, out


def held_judge(conv: SharedConv, held: list, seed: int):
    """(a function of ``conv``'s current kernels giving its error on the held-out images
    ``held`` = (inputs, targets, floor): after the activation if one follows; how many
    output positions it is measured on, 0 for all). The error is judged before the fit
    and after each after-ReLU round: when the held-out images hold more than
    JUDGE_POSITIONS output positions, on that many of them drawn by ``seed``, their
    patches, targets and floors read once (at ResNet-50's size, judging on whole images
    read 200 images' activations from disk eight times per layer)."""
    x, target, floor = held
    n, c, kh, kw = conv.shape
    sample = sampled_positions(len(x) * target.shape[2] * target.shape[3], JUDGE_POSITIONS,
                               seed)
    if sample is not None and sampled_bytes(len(sample), c * kh * kw, n) <= JUDGE_BYTES:
        batches = list(conv.sampled_batches(x, target, floor, sample))
        measure, count = (lambda: conv.sampled_errors(batches)), len(sample)
    else:
        measure, count = (lambda: conv.errors(x, target, floor)), 0

    def judge() -> float:
        plain, act = measure()
        return plain if act is None else act
    return judge, count


def relu_floor(ctx: RefitContext, i: int, add: int | None, others: list[str],
               student: dict):
    """Where a Relu reads this Conv's output (or its residual Add's), the value of the
    Conv output below which the student's Relu output is 0: minus the student's other
    Add inputs, or 0; None when no Relu follows."""
    nodes = ctx.model.graph.node
    head = nodes[add].output[0] if add is not None else nodes[i].output[0]
    readers = [j for j in ctx.walk.order if head in nodes[j].input]
    if len(readers) != 1 or nodes[readers[0]].op_type != "Relu":
        return None
    if not others:
        return torch.zeros(())
    floor = ChunkedSum([(-1, residual_term(ctx, student, n)) for n in others])
    if all(n in ctx.constants or n not in student for n in others):
        return floor[:]  # the same for every image: one broadcast tensor
    return floor


def residual_term(ctx: RefitContext, env: dict, name: str):
    """The other input ``name`` of a residual Add as held; a constant with leading unit
    axes up to the 4-D output of the (2-D) Conv, so that no axis of it can pass for the
    images' (a (1024, 1, 1) constant beside 1,024 calibration images would be cut as
    their rows)."""
    value = ctx.lookup(env, name, raw=True)
    if name in env and name not in ctx.constants:
        return value
    return value.reshape((1,) * max(0, 4 - value.dim()) + tuple(value.shape))
