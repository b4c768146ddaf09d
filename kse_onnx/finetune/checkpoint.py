"""Reading a fine-tuning checkpoint back for ``--resume``: the file is untrusted, so it is
loaded with ``weights_only`` (tensors and plain containers: nothing in it is executed)
and its structure is checked before any of it is used: a dict with the keys written by
``finetune`` and their types; every state (the model's, the best epoch's) holding
exactly the module's names with their shapes, dtypes and finite values; the
optimizer's state matching the optimizer's parameter groups and parameter shapes. A
mismatch is a one-line error naming the checkpoint, never torch's state-dict message."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ModelError

FIELDS = {"module": dict, "optimizer": dict, "optimizer_type": str, "epoch": int,
          "best_acc": (int, float)}


def load_checkpoint(path: Path, module: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[int, float, dict | None]:
    """(epoch to start from, best held-out accuracy, best state or None) of the
    checkpoint at ``path``, its states loaded into ``module`` and ``optimizer``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a kse-onnx checkpoint or holds objects other "
                         f"than tensors; refused ({type(exc).__name__})") from exc
    if not isinstance(state, dict):
        raise ModelError(f"{path}: not a kse-onnx checkpoint (a {type(state).__name__}, "
                         "expected a dict)")
    for key, kind in FIELDS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ModelError(f"{path}: not a kse-onnx checkpoint (field {key!r} is "
                             f"{type(value).__name__})")
    if state["epoch"] < 0 or not math.isfinite(state["best_acc"]):
        raise ModelError(f"{path}: epoch {state['epoch']} or best accuracy "
                         f"{state['best_acc']} out of range")
    kind = type(optimizer).__name__
    if state["optimizer_type"] != kind:
        raise ModelError(f"{path}: written with the {state['optimizer_type']} optimizer, "
                         f"resumed with {kind}; pass the same --optimizer")
    best = state.get("best")
    expected = module.state_dict()
    _check_state(state["module"], expected, path, "module")
    if best is not None:
        if not isinstance(best, dict):
            raise ModelError(f"{path}: field 'best' is {type(best).__name__}, expected a dict")
        _check_state(best, expected, path, "best")
    _check_optimizer(state["optimizer"], optimizer, path)
    module.load_state_dict(state["module"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"{path}: optimizer state does not fit ({exc})") from None
    return state["epoch"], float(state["best_acc"]), best


def _check_state(state: dict, expected: dict, path: Path, field: str) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        name, what = (missing[0], "lacks") if missing else (extra[0], "has an unknown")
        raise ModelError(f"{path}: {field} state {what} tensor {name!r}: written for another "
                         "model")
    for name, want in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor):
            raise ModelError(f"{path}: {field} state {name!r} is not a tensor")
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ModelError(f"{path}: {field} state {name!r} is {got.dtype} "
                             f"{list(got.shape)}, the model has {want.dtype} "
                             f"{list(want.shape)}: written for another model")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise ModelError(f"{path}: {field} state {name!r} holds NaN or infinite values")


def _check_optimizer(saved: dict, optimizer: torch.optim.Optimizer, path: Path) -> None:
    groups, states = saved.get("param_groups"), saved.get("state")
    mine = optimizer.param_groups
    fits = (isinstance(groups, list) and isinstance(states, dict) and len(groups) == len(mine)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    and len(g["params"]) == len(m["params"])
                    for g, m in zip(groups, mine, strict=True)))
    if not fits:
        raise ModelError(f"{path}: optimizer state does not fit the model's parameters")
    params = {}
    for g, m in zip(groups, mine, strict=True):
        params.update(zip(g["params"], m["params"], strict=True))
    for index, entry in states.items():
        if index not in params or not isinstance(entry, dict):
            raise ModelError(f"{path}: optimizer state names an unknown parameter {index!r}")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                raise ModelError(f"{path}: optimizer state {key!r} is not a tensor")
            if value.dim() and value.shape != params[index].shape:
                raise ModelError(f"{path}: optimizer state {key!r} has shape "
                                 f"{list(value.shape)}, its parameter "
                                 f"{list(params[index].shape)}")
