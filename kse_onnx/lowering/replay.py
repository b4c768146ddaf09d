"""``--choices`` for ``auto``: the layer forms and storage recorded by an earlier run (its
model or JSON report), applied without timing, so the output is byte-identical."""

from __future__ import annotations

from ..errors import OptionError
from ..graph.export import recorded_settings
from . import LayerForm


def recorded_forms(path: str, names: list[str]) -> tuple[dict[str, LayerForm], bool]:
    """Layer forms and storage recorded by an earlier ``auto`` run (model or report)."""
    settings = recorded_settings(path)
    recorded = settings.layer_forms
    if recorded is None:
        raise OptionError("--choices", f"{path}: records no layer forms (not an auto output)")
    missing = [n for n in names if n not in recorded]
    if missing:
        raise OptionError("--choices", f"{path}: no form recorded for layer {missing[0]!r} "
                                       "(was it made from this model and these settings?)")
    try:
        forms = {n: LayerForm.parse(recorded[n]) for n in names}
    except ValueError as exc:
        raise OptionError("--choices", f"{path}: {exc}") from exc
    return forms, settings.compact_storage is not False
