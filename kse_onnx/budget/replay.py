"""``--choices`` for a budget: the kept channels recorded by an earlier run (its model or
JSON report), applied without timing, so the output is byte-identical."""

from __future__ import annotations

from ..errors import OptionError
from ..graph.export import recorded_settings


def recorded_budget(path: str) -> tuple[dict, dict, list[str]]:
    """(layer -> kept input channels, stream key -> kept classes, removed residual blocks)
    recorded in ``path``."""
    settings = recorded_settings(path)  # types checked: lists of channel indices
    layers, streams = settings.budget_layers, settings.budget_streams
    if layers is None or streams is None:
        raise OptionError("--choices", f"{path}: records no latency budget (not an output of "
                                       "optimize --target-latency)")
    return layers, streams, list(settings.removed_blocks or ())
