"""The settings kse-onnx records in a model's metadata (key ``kse_onnx``, JSON) and
repeats in its JSON report, as one typed, versioned dataclass: :class:`RecordedSettings`.

Every reader (``verify``, ``refit``, ``finetune``, the quantizer, ``--choices``) gets
this object, never the JSON. The JSON is checked before it is believed: a file may have
been edited or crafted, so a value of the wrong type, a group of options with a field
missing, or a value its option class refuses (a range) is a :class:`SettingsError`
naming the field, which the reader turns into a one-line error naming the file.

Layout version: ``settings_version`` in the JSON; absent means layout 1, the layout
kse-onnx 0.1 writes (so the bytes written stay those of 0.1). A reader refuses a layout
it does not know. A later layout writes ``settings_version`` explicitly.

Every field of the recorded option classes has the type of its default (a tuple is a
JSON list of strings); the other keys are listed in ``EXTRA``. Unknown keys are ignored
(a newer version may record more).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import OptionError
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
LAYOUT = 1  # the layout this version reads and writes; absent in the JSON = 1
VERSION_KEY = "settings_version"
# not recorded: replays rebuild from what they chose (the layer_forms; the budget's kept
# channels and removed blocks), and a model written before budget_importance existed
# still reads
UNRECORDED = {LowerOptions: ("choices",),
              BudgetOptions: ("budget_importance", "budget_blocks")}
# fields added within layout 1: recorded only when not their default, absent = default (so
# models written before them still read, and the bytes of those that do not use them stay)
LATER = {SelectOptions: ("layer_gt",)}


class SettingsError(ValueError):
    """Recorded settings that cannot be believed; the text names the field."""


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
    VERSION_KEY: CHECKS[int],
    "kse_onnx_version": CHECKS[str],
    "compressed_layers": CHECKS[tuple],
    "compact_storage": CHECKS[bool],
    "layer_forms": (_map(lambda v: isinstance(v, str)), "an object of layer -> form"),
    "budget_layers": (_map(_ints), "an object of layer -> list of channel indices"),
    "budget_streams": (_map(_ints), "an object of stream -> list of channel indices"),
    "removed_blocks": CHECKS[tuple],
    "refit_images": CHECKS[int],
    "calibration_images": CHECKS[int],
    "int8_float_nodes": CHECKS[tuple],
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
    """What is wrong with the types of recorded ``settings`` (the JSON ``field`` holding
    them), naming the field and what it should be; None when nothing is."""
    if not isinstance(settings, dict):
        return f"field {field!r} is a {type(settings).__name__}, expected a JSON object"
    for key, value in settings.items():
        check = SCHEMA.get(key)
        if check is not None and not check[0](value):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            flag = f" (--{key.replace('_', '-')})" if key in OPTION_FIELDS else ""
            return f"field '{field}.{key}'{flag} is {shown}, expected {check[1]}"
    version = settings.get(VERSION_KEY, LAYOUT)
    if version != LAYOUT:
        return (f"field '{field}.{VERSION_KEY}' is {version}: a layout this kse-onnx does "
                f"not read (it reads layout {LAYOUT}; written by a newer kse-onnx?)")
    return None


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name not in UNRECORDED.get(cls, ())]


def _group(cls, raw: dict, field: str):
    """The ``cls`` options recorded in ``raw``: None when none of its fields is, else
    all of them, checked by ``cls`` (ranges: the work a crafted file asks for stays
    bounded)."""
    names = _fields(cls)
    if not any(n in raw for n in names):
        return None
    later = LATER.get(cls, ())
    missing = [n for n in names if n not in raw and n not in later]
    if missing:
        raise SettingsError(f"field {field!r} lacks {missing[0]!r}")
    try:
        return cls(**{n: tuple(raw[n]) if isinstance(raw[n], list) else raw[n]
                      for n in names if n in raw})
    except (OptionError, TypeError, ValueError) as exc:  # an OptionError names the flag
        raise SettingsError(f"field {field!r}: {exc}") from None


# attribute -> option class of the recorded groups; the facts of a run, as recorded
GROUPS = (("kse", KSEOptions), ("select", SelectOptions), ("lower", LowerOptions),
          ("budget", BudgetOptions), ("refit", RefitOptions), ("quantize", QuantizeOptions))
FACTS = ("kse_onnx_version", "refit_images", "budget_layers", "budget_streams",
         "removed_blocks", "calibration_images", "compact_storage", "layer_forms",
         "int8_float_nodes")


def _fields_of(options) -> dict:
    cls = type(options)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {n: list(v) if isinstance(v, tuple) else v
            for n in _fields(cls) for v in [getattr(options, n)]
            if n not in LATER.get(cls, ()) or v != defaults[n]}


@dataclass(frozen=True)
class RecordedSettings:
    """What an optimized model records about how it was made (layout :data:`LAYOUT`).

    Option groups are None when not recorded: ``lower`` only in models (not in
    ``score``'s report), ``refit`` only when refitted (the JSON then says ``"refit":
    "none"``), ``budget`` with ``--target-latency``, ``quantize`` in an INT8 model.
    ``layer_forms`` and ``compact_storage`` come with ``auto`` and budgets."""

    kse: KSEOptions | None = None
    select: SelectOptions | None = None
    kse_onnx_version: str | None = None  # the package that wrote them
    lower: LowerOptions | None = None
    refit: RefitOptions | None = None
    refit_images: int | None = None
    budget: BudgetOptions | None = None
    budget_layers: dict[str, list[int]] | None = None  # layer -> kept input channels
    budget_streams: dict[str, list[int]] | None = None  # stream -> kept channels
    quantize: QuantizeOptions | None = None
    calibration_images: int | None = None
    compressed_layers: tuple[str, ...] | None = None
    compact_storage: bool | None = None
    layer_forms: dict[str, str] | None = None  # layer -> LayerForm label
    int8_float_nodes: list[str] | None = None  # left float in INT8 by --max-drop
    removed_blocks: list[str] | None = None  # residual blocks removed (--budget-blocks)

    @classmethod
    def from_dict(cls, raw, field: str = "settings") -> RecordedSettings:
        """The settings in ``raw`` (parsed JSON, untrusted); a :class:`SettingsError`
        naming ``field`` and the key when they cannot be believed."""
        problem = settings_problem(raw, field)
        if problem:
            raise SettingsError(problem)
        groups = {name: _group(options, raw, field) for name, options in GROUPS
                  if name != "refit" or raw.get("refit") != "none"}  # "none": not refitted
        layers = raw.get("compressed_layers")
        return cls(**groups, **{k: raw.get(k) for k in FACTS},
                   compressed_layers=None if layers is None else tuple(layers))

    def to_dict(self) -> dict:
        """The JSON object recorded (keys sorted): exactly what :meth:`from_dict` read,
        for everything this version writes."""
        out: dict = {}
        for name, _ in GROUPS:
            if getattr(self, name) is not None:
                out.update(_fields_of(getattr(self, name)))
        if self.lower is not None and self.refit is None:
            out["refit"] = "none"
        out.update({k: getattr(self, k) for k in FACTS if getattr(self, k) is not None})
        if self.compressed_layers is not None:
            out["compressed_layers"] = list(self.compressed_layers)
        return dict(sorted(out.items()))

    @property
    def compressed(self) -> set[str]:
        """The compressed Conv nodes (none recorded: none)."""
        return set(self.compressed_layers or ())

    def analysis(self, field: str = "settings") -> tuple[KSEOptions, SelectOptions]:
        """The analysis options, which every optimized model records; a SettingsError
        naming the first missing field otherwise."""
        for options, cls in ((self.kse, KSEOptions), (self.select, SelectOptions)):
            if options is None:
                raise SettingsError(f"field {field!r} lacks {_fields(cls)[0]!r}")
        return self.kse, self.select
