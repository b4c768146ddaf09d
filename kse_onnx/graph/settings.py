"""The schema of the settings kse-onnx records in a model's metadata (key ``kse_onnx``,
JSON) and repeats in its JSON report, checked wherever they are read back (``verify``,
``refit``, ``finetune``, ``--choices``): a file may have been edited or crafted, so a
value of the wrong type is a one-line error naming the file and the field, never a
crash further on. Ranges are checked later, by the option classes the values feed.

Every field of the option classes that are recorded has the type of its default (a
tuple is a JSON list of strings); the other keys are listed in ``EXTRA``. Unknown keys
are ignored (a newer version may record more).
"""

from __future__ import annotations

import dataclasses

from ..options import (
    BudgetOptions,
    CalibrationOptions,
    KSEOptions,
    LowerOptions,
    QuantizeOptions,
    RefitOptions,
    SelectOptions,
)

RECORDED = (KSEOptions, SelectOptions, LowerOptions, BudgetOptions, RefitOptions,
            QuantizeOptions, CalibrationOptions)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _ints(v) -> bool:
    return isinstance(v, list) and all(_is_int(i) for i in v)


def _map(check):
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x)
                                                 for k, x in v.items())


CHECKS = {bool: (lambda v: isinstance(v, bool), "true or false"),
          int: (_is_int, "an integer"),
          float: (_is_number, "a number"),
          str: (lambda v: isinstance(v, str), "a string"),
          tuple: (_strings, "a list of strings")}

EXTRA = {
    "kse_onnx_version": CHECKS[str],
    "compressed_layers": CHECKS[tuple],
    "compact_storage": CHECKS[bool],
    "layer_forms": (_map(lambda v: isinstance(v, str)), "an object of layer -> form"),
    "budget_layers": (_map(_ints), "an object of layer -> list of channel indices"),
    "budget_streams": (_map(_ints), "an object of stream -> list of channel indices"),
    "refit_images": CHECKS[int],
}


def _schema() -> dict:
    schema = dict(EXTRA)
    for cls in RECORDED:
        for f in dataclasses.fields(cls):
            schema.setdefault(f.name, CHECKS[type(f.default)])
    return schema


SCHEMA = _schema()
OPTION_FIELDS = {f.name for cls in RECORDED for f in dataclasses.fields(cls)}


def settings_problem(settings, field: str = "settings") -> str | None:
    """What is wrong with recorded ``settings`` (the JSON ``field`` holding them), naming
    the field and what it should be; None when nothing is."""
    if not isinstance(settings, dict):
        return f"field {field!r} is a {type(settings).__name__}, expected a JSON object"
    for key, value in settings.items():
        check = SCHEMA.get(key)
        if check is not None and not check[0](value):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            flag = f" (--{key.replace('_', '-')})" if key in OPTION_FIELDS else ""
            return f"field '{field}.{key}'{flag} is {shown}, expected {check[1]}"
    return None
