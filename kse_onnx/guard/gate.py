"""``verify --max-drop D --inputs DATA``: a CI gate on the measured drop (exit 1 above D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import load_data
from ..errors import OptionError
from ..graph.io import load_model
from ..options import DataOptions
from .measure import Drop, measure


@dataclass
class Gate:
    drop: Drop
    max_drop: float

    @property
    def passed(self) -> bool:
        return self.drop.points <= self.max_drop  # NaN and inf fail

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        relation = "within" if self.passed else "above"
        return f"{verdict}: {self.drop.line()}, {relation} --max-drop {self.max_drop:g}"


def drop_gate(original_path, optimized_path, inputs: str, max_drop: float) -> Gate:
    """The drop of the optimized model against the original on the images ``inputs``
    (labels, when the data has them, make it accuracy lost)."""
    x, y = load_data(inputs, DataOptions())
    if not len(x):
        raise OptionError("--inputs", f"{inputs}: holds no images")
    if not np.all(np.isfinite(x)):
        raise OptionError("--inputs", f"{inputs}: images hold NaN or infinite values")
    source = "images with labels" if y is not None else "images"
    drop = measure(load_model(original_path), load_model(optimized_path), x,
                   None if y is None else np.asarray(y), source=f"{source} of {inputs}")
    return Gate(drop, max_drop)
