"""``--choices`` for a budget: the kept channels recorded by an earlier run (its model or
JSON report), applied without timing, so the output is byte-identical."""

from __future__ import annotations

from ..errors import OptionError
from ..graph.export import recorded_settings


def recorded_budget(path: str) -> tuple[dict, dict]:
    """(layer -> kept input channels, stream key -> kept classes) recorded in ``path``."""
    settings = recorded_settings(path)
    layers, streams = settings.get("budget_layers"), settings.get("budget_streams")
    if not isinstance(layers, dict) or not isinstance(streams, dict):
        raise OptionError("--choices", f"{path}: records no latency budget (not an output of "
                                       "optimize --target-latency)")
    for name, kept in [*layers.items(), *streams.items()]:
        if not isinstance(kept, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in kept):
            raise OptionError("--choices", f"{path}: malformed kept channels for {name!r}")
    return layers, streams
