"""The ``block`` mode of the refit (docs/refit.md): after the least squares of each Conv,
a joint gradient fit of all the compressed Convs between two cuts of the graph (a
residual block) to the teacher's block output."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..onnx_torch.interpreter import Interpreter
from .context import RefitContext
from .layer import SharedConv


def fit_block(ctx: RefitContext, members: list[int], block_input: str,
              convs: dict[int, SharedConv], teacher: dict, student: dict):
    """(the block's output over the images, held as the walk holds; its report) after a
    joint fit of the compressed Convs ``convs`` among the nodes ``members`` (walk order)
    from the student's ``block_input``; (None, None) when the block has none."""
    convs = {j: convs[j] for j in members if j in convs}
    if not convs:
        return None, None
    started = time.perf_counter()
    options = ctx.options
    output = ctx.model.graph.node[members[-1]].output[0]
    inputs = {block_input: ctx.lookup(student, block_input)}
    with torch.enable_grad():
        before, after = fit_segment(ctx.interpreter, members, inputs, ctx.constants, convs,
                                    output, ctx.lookup(teacher, output), options.refit_steps,
                                    options.refit_lr, options.refit_batch,
                                    options.refit_seed + members[0], ctx.fitted)
    env = ctx.interpreter.run(dict(inputs), members, ctx.constants.__getitem__,
                              conv_overrides(convs))
    report = {"first": ctx.names[members[0]], "last": ctx.names[members[-1]],
              "convs": len(convs), "error_before": before, "error_after": after,
              "seconds": round(time.perf_counter() - started, 3)}
    return ctx.runner.keep(env[output]), report


def conv_overrides(convs: dict[int, SharedConv], params: dict | None = None) -> dict:
    """Interpreter overrides running each Conv of ``convs`` (by node index) with its
    shared kernels: ``params[j]`` (kernels, bias) when given, else its current ones."""
    def override(j, conv):
        def run(args):
            kernels, bias = params[j] if params is not None else conv.tensors()
            return conv.forward(args[0], kernels, bias)
        return run
    return {j: override(j, conv) for j, conv in convs.items()}


def fit_segment(interpreter: Interpreter, order: list[int], inputs: dict[str, torch.Tensor],
                constants: dict[str, torch.Tensor], convs: dict[int, SharedConv],
                output: str, target: torch.Tensor, steps: int, lr: float, batch: int,
                seed: int, fitted: int | None = None) -> tuple[float, float]:
    """Adam on the kernels and biases of ``convs`` (by node index) so that running the
    nodes ``order`` from ``inputs`` gives ``target`` at ``output`` (mean squared error
    over the target's energy), on minibatches of the first ``fitted`` images (all by
    default). Keeps the new values only if the error fell on the other images (held
    out), or over every image when none is. Returns (relative error before, after) on
    the judged images."""
    def run(select, params):
        env = {name: value[select] for name, value in inputs.items()}
        return interpreter.run(env, order, constants.__getitem__,
                               conv_overrides(convs, params))[output]

    n = len(target)
    fitted = n if fitted is None else fitted
    judged = range(fitted, n) if fitted < n else range(n)

    def full_error(params) -> float:
        with torch.no_grad():
            chunks = [slice(s, min(s + 256, judged.stop)) for s in range(judged.start,
                                                                        judged.stop, 256)]
            sq = sum(float((run(c, params).double() - target[c].double()).square().sum())
                     for c in chunks)
            energy = sum(float(target[c].double().square().sum()) for c in chunks)
            return float(np.sqrt(sq / max(energy, 1e-30)))

    start = {name: conv.tensors() for name, conv in convs.items()}
    before = full_error(start)
    params = {name: (k.clone().requires_grad_(True), b.clone().requires_grad_(True))
              for name, (k, b) in start.items()}
    groups = []
    for k, b in params.values():
        scale = float(k.detach().square().mean().sqrt()) or 1.0
        groups.append({"params": [k, b], "lr": lr * scale})
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(seed)
    energy = target[:fitted].square().mean().clamp_min(1e-30)
    for _ in range(steps):
        pick = torch.randint(0, fitted, (min(batch, fitted),), generator=generator)
        loss = (run(pick, params) - target[pick]).square().mean() / energy
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fitted = {name: (k.detach(), b.detach()) for name, (k, b) in params.items()}
    after = full_error(fitted)
    if after < before:
        for name, (k, b) in fitted.items():
            convs[name].kernels = k.double().numpy()
            convs[name].bias = b.double().numpy()
        return before, after
    return before, before
