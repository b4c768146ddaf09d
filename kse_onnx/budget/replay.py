"""``--choices`` for a budget: the kept channels recorded by an earlier run (its model or
JSON report), applied without timing, so the output is byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OptionError


def recorded_budget(path: str) -> tuple[dict, dict]:
    """(layer -> kept input channels, stream key -> kept classes) recorded in ``path``."""
    from ..graph.export import settings_of
    from ..graph.io import load_model

    source = Path(path)
    if source.suffix == ".json":
        try:
            settings = json.loads(source.read_text()).get("settings", {})
        except (OSError, ValueError, AttributeError) as exc:
            raise OptionError("--choices", f"{path}: cannot read a JSON report ({exc})") from exc
    else:
        settings = settings_of(load_model(source)) or {}
    layers, streams = settings.get("budget_layers"), settings.get("budget_streams")
    if not isinstance(layers, dict) or not isinstance(streams, dict):
        raise OptionError("--choices", f"{path}: records no latency budget (not an output of "
                                       "optimize --target-latency)")
    for name, kept in [*layers.items(), *streams.items()]:
        if not isinstance(kept, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in kept):
            raise OptionError("--choices", f"{path}: malformed kept channels for {name!r}")
    return layers, streams
