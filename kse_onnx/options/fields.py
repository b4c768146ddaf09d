"""The machinery of the option classes: a field with its CLI metadata, the checks the
classes' ``__post_init__`` share, the parsers of list-valued flags, and the
enumerations (defined once here, used by the classes, the CLI and the readers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import field

from ..errors import OptionError

ENTROPY_MODES = ("paper", "official")
LOWERINGS = ("auto", "dense", "compact", "factored")
# provider names of the CLI -> onnxruntime's execution providers
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
PROVIDER_NAMES = tuple(PROVIDERS)
KMEANS_INITS = ("ward", "k-means++")
BUDGET_IMPORTANCES = ("indicator", "sensitivity")  # docs/budget.md, budget/importance.py
MAX_LEVELS = 32  # G and T: 2**(g+1-T-G) stays a normal float
MAX_GLOB = 256  # characters of an --only/--skip glob
MAX_GLOBS = 256  # globs per --only/--skip
QUANTIZE_MODES = ("none", "int8-dynamic", "int8-static")
MINIMIZE = ("size", "latency")  # --max-drop: the smallest file, or the fastest model
REFIT_MODES = ("none", "ls", "act", "block", "distill")
SCHEDULES = ("cosine", "step", "constant")
LOSSES = ("auto", "kd", "mse", "features")
OPTIMIZERS = ("auto", "sgd", "adam")
# --lr 0: the chosen optimizer's. Adam's from tools/results/finetune_dense.py (docs/results.md)
DEFAULT_LR = {"sgd": 0.01, "adam": 0.003}
DEFAULT_BATCH = {"kd": 128, "mse": 32, "features": 32}  # --batch 0: the loss's


def option(default, help: str, flag: str | None = None, choices=None,  # noqa: A002
           metavar: str | None = None, required: bool = False):
    """A field with its CLI metadata: help, flag (default ``--field-name``), choices,
    metavar (default: the choices, or the field name in capitals) and whether the flag
    must be given."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                            "metavar": metavar, "required": required})


def check_int(obj, name: str, low: int, high: int | None = None) -> None:
    value = getattr(obj, name)
    flag = "--" + name.replace("_", "-")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionError(flag, f"must be an integer >= {low}, got {shown}")
    if high is not None and value > high:
        raise OptionError(flag, f"must be an integer <= {high}, got {shown}")


def check_glob(flag: str, pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise OptionError(flag, f"empty or non-text glob {pattern!r}")
    if len(pattern) > MAX_GLOB:
        raise OptionError(flag, f"glob longer than {MAX_GLOB} characters")
    if pattern.count("[") != pattern.count("]"):
        raise OptionError(flag, f"malformed glob {pattern!r} (unbalanced brackets)")



def check_choice(flag: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionError(flag, f"must be one of {choices}, got {value!r}")



def batch_list(text: str, flag: str = "--batches") -> list[int]:
    """``"1,64"`` -> ``[1, 64]``; an OptionError naming ``flag`` otherwise."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError as exc:
        raise OptionError(flag, f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise OptionError(flag, f"values must be >= 1, got {text!r}")
    return values


def shape_list(text: str, flag: str = "--input-shape") -> tuple[int, ...] | None:
    """``"3,32,32"`` -> ``(3, 32, 32)``; None for ""; an OptionError naming ``flag``."""
    if not text:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError as exc:
        raise OptionError(flag, f"expected comma-separated integers, got {text!r}") from exc
    if not 2 <= len(values) <= 4 or min(values) < 1 or max(values) > 1 << 16:
        raise OptionError(flag, f"expected 2 to 4 sizes in [1, 65536] such as 3,32,32; "
                          f"got {text!r}")
    return values


def as_dict(*options) -> dict:
    """All settings of several option objects, for reports and model metadata."""
    merged: dict = {}
    for opt in options:
        merged.update(dataclasses.asdict(opt))
    return merged
