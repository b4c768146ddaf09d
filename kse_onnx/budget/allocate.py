"""Allocation of kept channel counts across spans (docs/budget.md).

Predicted model latency at timing point p, as a ratio to the measured original M_p:
``rho_p = 1 + sum_l (t_l,p(cin_l, cout_l) - t_l,p(full)) / F_p``, with ``t_l,p`` from the
per-layer table (:mod:`.table`) and ``F_p = max(M_p, sum_l t_l,p(full) / CONV_SHARE)``,
``M_p`` the reference's measured time (the original, or its INT8; layers timed alone
can add up to more than the model). The whole-model measurements of :mod:`.search`
calibrate the prediction.

Greedy rule: starting from every span whole, repeatedly apply the cut of ``j`` aligned
steps of one span (its ``j * step`` least important ids) with the largest
``sum_p (rho_p before - rho_p after) / (mass removed + eps)`` (latency saved per
indicator mass lost), until ``rho_p <= target_p`` at every point. Looking ``j`` steps ahead lets a
span pass a count the runtime handles badly (an unaligned SIMD block) to a better one.
Then single steps are given back while the targets still hold, the most mass per
predicted latency first (the look-ahead can overshoot). Ties go to the larger saving
(mass), then to the span listed first: deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spans import Cuts
from .table import predict_ms

EPS = 1e-6
CONV_SHARE = 0.9  # least share of the model's time taken by its Convs, for the scale


@dataclass
class Allocation:
    kept: dict[str, int]  # span name -> kept ids
    predicted: dict[str, float]  # point -> predicted ratio
    reachable: bool


class Predictor:
    """Predicted ratios ``rho_p`` for a state (span -> kept count)."""

    def __init__(self, cuts: Cuts, table: dict, float_ms: dict[str, float]):
        self.cuts, self.table = cuts, table
        self.points = sorted(float_ms)
        # layers timed alone can add up to more than the model (each pays its own layout
        # changes): the denominator is at least their sum over CONV_SHARE
        conv = {p: sum(t["full_ms"][p] for t in table.values()) for p in self.points}
        self.float_ms = {p: max(float_ms[p], conv[p] / CONV_SHARE) for p in self.points}

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


    def partial(self, kept: dict[str, int], span) -> dict[str, float]:
        """The part of the ratios from the Convs ``span`` touches (to compare cuts)."""
        counts = self.cuts.counts(kept)
        out = dict.fromkeys(self.points, 0.0)
        for name in set(span.readers) | set(span.producers):
            now = self.layer_ms(name, *counts[name])
            for p in self.points:
                out[p] += now[p] / self.float_ms[p]
        return out


def minimum(cuts: Cuts, step: int) -> dict[str, int]:
    """Every span cut to its smallest aligned count (one step, or whole if smaller)."""
    return {s.name: min(s.size, step) for s in cuts.spans}


def allocate(cuts: Cuts, predictor: Predictor, step: int, targets: dict[str, float]
             ) -> Allocation:
    """Greedy cuts (module docstring) until the predicted ratio at every point ``p`` is at
    most ``targets[p]``."""
    kept = {s.name: s.size for s in cuts.spans}
    ratios = predictor.ratios(kept)
    while any(ratios[p] > targets[p] for p in ratios):
        best = None
        for index, span in enumerate(cuts.spans):
            k = kept[span.name]
            now = predictor.partial(kept, span)
            for new in range(step * ((k - 1) // step), step - 1, -step):
                lost = float(span.mass[span.size - k:span.size - new].sum())
                after = predictor.partial({**kept, span.name: new}, span)
                saved = sum(now[p] - after[p] for p in ratios)
                key = (saved / (lost + EPS), saved, -index)
                if saved > 0 and (best is None or key > best[0]):
                    best = (key, span.name, new, {p: ratios[p] - now[p] + after[p]
                                                  for p in ratios})
        if best is None:
            return Allocation(kept, ratios, False)
        _, name, new, ratios = best
        kept[name] = new
    return Allocation(*give_back(cuts, predictor, step, targets, kept, ratios), True)


def give_back(cuts: Cuts, predictor: Predictor, step: int, targets: dict[str, float],
              kept: dict[str, int], ratios: dict[str, float]):
    """Undo single steps while the targets still hold: the look-ahead cuts can overshoot.
    Each time, the step restoring the most mass per predicted latency it costs."""
    while True:
        best = None
        for index, span in enumerate(cuts.spans):
            k = kept[span.name]
            if k >= span.size:
                continue
            new = min(span.size, k + step)
            now = predictor.partial(kept, span)
            after = predictor.partial({**kept, span.name: new}, span)
            trial = {p: ratios[p] - now[p] + after[p] for p in ratios}
            if any(trial[p] > targets[p] for p in trial):
                continue
            gained = float(span.mass[span.size - new:span.size - k].sum())
            cost = max(sum(after[p] - now[p] for p in ratios), 0.0)
            key = (gained / (cost + EPS), gained, -index)
            if best is None or key > best[0]:
                best = (key, span.name, new, trial)
        if best is None:
            return kept, ratios
        _, name, new, ratios = best
        kept[name] = new
