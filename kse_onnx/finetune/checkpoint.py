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
          "best_epoch": int}


def load_checkpoint(path: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[int, tuple[float, float] | None, dict | None, int]:
    """(epoch to start from, best held-out score or None, best state or None, best epoch)
    of the checkpoint at ``path``, its states loaded into ``module`` and ``optimizer``."""
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
    score = _score(state.get("best_score"), path)
    if not 0 <= state["best_epoch"] <= state["epoch"]:
        raise ModelError(f"{path}: epoch {state['epoch']} or best epoch "
                         f"{state['best_epoch']} out of range")
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
    return state["epoch"], score, best, state["best_epoch"]


def _score(value, path: Path) -> tuple[float, float] | None:
    """The recorded best held-out score: None, or two numbers (-inf allowed, never NaN)."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and not math.isnan(v) for v in value)):
        raise ModelError(f"{path}: field 'best_score' is not a pair of numbers")
    return float(value[0]), float(value[1])


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
