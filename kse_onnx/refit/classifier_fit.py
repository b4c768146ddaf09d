"""The classifier of the refit (``refit_classifier``): the final Gemm's weight and bias
refitted by damped least squares to the teacher's logits, from the student's features
(docs/refit.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .context import RefitContext
from .layer import relative_error


@dataclass(frozen=True)
class ClassifierFit:
    old: torch.Tensor  # the Gemm's output with its own values
    new: torch.Tensor  # with the refitted values (``old`` when none)
    report: dict | None  # None when the Gemm's bias has a shape the fit leaves alone
    values: dict[str, np.ndarray]  # initializer name -> refitted value, empty if not kept


def fit_classifier(ctx: RefitContext, i: int, s_args: list, teacher: dict) -> ClassifierFit:
    """The least-squares fit of Gemm ``i`` from the student's inputs ``s_args``, kept
    only where it lowers the error on the held-out images (or, with none, the fitted)."""
    node = ctx.model.graph.node[i]
    attrs = ctx.interpreter.attrs[i]
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    k = ctx.fitted
    features = s_args[0][:k].double().numpy()
    wanted = ctx.lookup(teacher, node.output[0])
    target = wanted[:k].double().numpy()
    has_bias = len(node.input) > 2 and bool(node.input[2])
    design = np.hstack([features, np.ones((len(features), 1))]) if has_bias else features
    gram = design.T @ design
    damping = ctx.options.refit_damping * max(float(np.mean(np.diag(gram))), 1e-30)
    solution = np.linalg.solve(gram + damping * np.eye(len(gram)), design.T @ target)
    judged = slice(k, None) if k < len(wanted) else slice(None)  # held out, or all
    old_out = ctx.interpreter.node(i, s_args)[0]
    before = relative_error(old_out[judged], wanted[judged])
    weight = solution[:features.shape[1]] / alpha
    if attrs.get("transB", 0):
        weight = weight.T
    new_args = list(s_args)
    new_args[1] = torch.from_numpy(weight.astype(np.float32))
    if has_bias:
        bias_shape = tuple(s_args[2].shape)
        bias = np.broadcast_to(solution[-1] / beta, (target.shape[1],))
        if bias_shape != (target.shape[1],) and bias_shape != (1, target.shape[1]):
            same = ctx.interpreter.node(i, s_args)[0]  # a bias of another shape: left alone
            return ClassifierFit(same, same, None, {})
        new_args[2] = torch.from_numpy(bias.reshape(bias_shape).astype(np.float32))
    out = ctx.interpreter.node(i, new_args)[0]
    after = relative_error(out[judged], wanted[judged])
    report = {"name": ctx.names[i], "error_before": float(before), "error_after": float(after),
              "kept": bool(after < before),  # a numpy bool is no JSON
              "judged_on": "held-out images" if k < len(wanted) else "the fitted images"}
    if not after < before:
        return ClassifierFit(old_out, old_out, report, {})
    values = {node.input[1]: new_args[1].numpy()}
    if has_bias:
        values[node.input[2]] = new_args[2].numpy()
    return ClassifierFit(old_out, out, report, values)
