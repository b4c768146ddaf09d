"""Allocation of kept channel counts across units (docs/budget.md).

Predicted model latency at timing point p, as a ratio to the measured original M_p:
``rho_p = 1 + sum_l (t_l,p(cin_l, cout_l) - t_l,p(full)) / F_p``, with ``t_l,p`` from the
per-layer table (:mod:`.table`) and ``F_p`` the float original's measured time
(``F_p = M_p`` for a float budget; the layer table is float, so for INT8 the whole-model
measurements of :mod:`.search` correct the prediction).

Greedy rule: starting from every unit whole, repeatedly apply the cut of ``j`` aligned
steps of one unit (its ``j * step`` least important ids) with the largest
``sum_p (rho_p before - rho_p after) / (mass removed + eps)`` (latency saved per
indicator mass lost), until ``max_p rho_p <= target``. Looking ``j`` steps ahead lets a
unit pass a count the runtime handles badly (an unaligned SIMD block) to a better one.
Ties go to the larger saving, then to the unit listed first: deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .table import predict_ms
from .units import Cuts

EPS = 1e-6


@dataclass
class Allocation:
    kept: dict[str, int]  # unit name -> kept ids
    predicted: dict[str, float]  # point -> predicted ratio
    reachable: bool


class Predictor:
    """Predicted ratios ``rho_p`` for a state (unit -> kept count)."""

    def __init__(self, cuts: Cuts, table: dict, float_ms: dict[str, float]):
        self.cuts, self.table, self.float_ms = cuts, table, float_ms
        self.points = sorted(float_ms)

    def layer_ms(self, name: str, cin: int, cout: int) -> dict[str, float]:
        return {p: predict_ms(self.table[name], cin, cout, p) for p in self.points}

    def ratios(self, kept: dict[str, int]) -> dict[str, float]:
        counts = self.cuts.counts(kept)
        out = dict.fromkeys(self.points, 1.0)
        for name, (cin, cout) in counts.items():
            g = self.cuts.geometry[name]
            now, full = self.layer_ms(name, cin, cout), self.layer_ms(name, g["cin"], g["cout"])
            for p in self.points:
                out[p] += (now[p] - full[p]) / self.float_ms[p]
        return out


    def partial(self, kept: dict[str, int], unit) -> dict[str, float]:
        """The part of the ratios from the Convs ``unit`` touches (to compare cuts)."""
        counts = self.cuts.counts(kept)
        out = dict.fromkeys(self.points, 0.0)
        for name in set(unit.readers) | set(unit.producers):
            now = self.layer_ms(name, *counts[name])
            for p in self.points:
                out[p] += now[p] / self.float_ms[p]
        return out


def minimum(cuts: Cuts, step: int) -> dict[str, int]:
    """Every unit cut to its smallest aligned count (one step, or whole if smaller)."""
    return {u.name: min(u.size, step) for u in cuts.units}


def allocate(cuts: Cuts, predictor: Predictor, step: int, target: float) -> Allocation:
    """Greedy cuts (module docstring) until the predicted ratio is at most ``target``."""
    kept = {u.name: u.size for u in cuts.units}
    ratios = predictor.ratios(kept)
    while max(ratios.values()) > target:
        best = None
        for index, unit in enumerate(cuts.units):
            k = kept[unit.name]
            now = predictor.partial(kept, unit)
            for new in range(step * ((k - 1) // step), step - 1, -step):
                lost = float(unit.mass[unit.size - k:unit.size - new].sum())
                after = predictor.partial({**kept, unit.name: new}, unit)
                saved = sum(now[p] - after[p] for p in ratios)
                key = (saved / (lost + EPS), saved, -index)
                if saved > 0 and (best is None or key > best[0]):
                    best = (key, unit.name, new, {p: ratios[p] - now[p] + after[p]
                                                  for p in ratios})
        if best is None:
            return Allocation(kept, ratios, False)
        _, name, new, ratios = best
        kept[name] = new
    return Allocation(kept, ratios, True)
