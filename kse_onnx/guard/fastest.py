"""``--max-drop D --minimize latency``: the fastest model within D, the lowest latency
budget R (``--target-latency``, docs/budget.md) whose model holds the drop.

Search: bisection on R in ``[LOW, 1]``. ``lo`` is a ratio assumed to fail, ``hi`` one
that holds (1: the original); each step builds the budget's model at ``R = (lo + hi) / 2``
(rounded to ``GRID``), refitted on the calibration images the guard does not hold out,
and measures its drop on the selection images: within D, ``hi = R``, else ``lo = R``. A
budget out of reach at R (the machine cannot make the model that fast) fails the step.
After ``STEPS`` steps the R resolution is ``(1 - LOW) / 2**STEPS`` (0.025). The candidates
that held are confirmed in order of R on the images kept back (:mod:`.confirm`), and the
first that holds there is written with its R, its measured latency ratio and its
confirmed drop.

Why bisection: the drop grows as R falls (fewer channels kept), not strictly (each R
is a measured search of its own, and timing noise moves the kept channels), so a
bisection can step over a narrow R that holds; every model it writes still holds D on
images no choice saw. Each step is a full latency search (minutes on a ResNet-50), so
the steps are few.
"""

from __future__ import annotations

import dataclasses

from ..errors import ModelError, OptionError
from ..options import BudgetOptions, GuardOptions, KSEOptions
from .confirm import Parts, confirmed
from .measure import drop, outputs

LOW = 0.2  # the lowest R tried (assumed to fail: a model 5x faster within D is rare)
STEPS = 5
GRID = 0.005  # R is rounded to this


def budget_ratio(report) -> float | None:
    """The measured latency ratio of a budget's written model (the worst timing point of
    the round it kept), None when the report has none."""
    budget = report.extra.get("budget") or {}
    met = [max(r["ratio"].values()) for r in budget.get("measured") or []
           if isinstance(r.get("ratio"), dict) and r["ratio"]
           and r.get("indicator_mass_kept") == budget.get("indicator_mass_kept")]
    return min(met) if met else None


def fastest_search(builder, fit, parts: Parts, guard: GuardOptions, say):
    """(the model at the lowest R that holds ``guard.max_drop`` on the selection and the
    confirmation images, its confirmation Drop); a ModelError naming the best pair (R,
    its measured ratio, the drop) when no R does. ``builder``: the search's Builder;
    ``fit``: the refit images; ``parts``: the selection and confirmation images."""
    lower = builder.settings.get("lower_options")
    if lower is not None and lower.lowering == "factored":
        raise OptionError("--lowering", "factored cannot be used with --minimize latency "
                                        "(the latency budget writes each layer dense)")
    x, y, source = parts.select_x, parts.select_y, parts.source
    reference = outputs(builder.source, x, "the original")
    budget = builder.settings.get("budget") or BudgetOptions()
    kse = builder.settings.get("kse") or KSEOptions()
    tried, held = [], []  # held: (R, built)

    def build(target: float):
        options = dataclasses.replace(budget, target_latency=target)
        step = dataclasses.replace(builder, settings={**builder.settings, "budget": options})
        return step(fit, kse, ())

    lo, hi = LOW, 1.0
    for _ in range(STEPS):
        target = round(round((lo + hi) / 2 / GRID) * GRID, 6)
        try:
            built = build(target)
        except (OptionError, ModelError) as exc:
            if "target-latency" not in str(exc):
                raise
            tried.append({"R": target, "ratio": None, "drop": None, "reason": str(exc)})
            say(f"fastest-within-drop search: R={target:g}: out of reach ({exc})")
            lo = target
            continue
        measured = drop(reference, outputs(built.model, x, "a candidate"), y, source)
        ratio = budget_ratio(built.report)
        tried.append({"R": target, "ratio": ratio, "drop": measured.to_dict(),
                      "file_size": built.report.file_size_after})
        shown = "" if ratio is None else f" (measured {ratio:.3f}x)"
        say(f"fastest-within-drop search: R={target:g}{shown}: {measured.line()}")
        if measured.points <= guard.max_drop:
            held.append((target, built))
            hi = target
        else:
            lo = target
    if not held:
        measured = [t for t in tried if t["drop"] and t["drop"]["points"] is not None]
        best = min(measured, key=lambda t: t["drop"]["points"]) if measured else None
        pair = ("no R could be built" if best is None else
                f"the best pair reached is R = {best['R']:g}"
                + ("" if best["ratio"] is None else f" (measured {best['ratio']:.3f}x)")
                + f" with a drop of {best['drop']['points']:.2f} points")
        raise ModelError(f"--max-drop {guard.max_drop:g} --minimize latency: no R in "
                         f"[{LOW:g}, 1) holds the drop on the {len(x)} {source}; {pair}; "
                         "raise --max-drop; nothing written")
    built, chosen, measured, looks = confirmed(
        builder.source, sorted(held, key=lambda h: h[0]), lambda h: h[1], parts,
        guard.max_drop, say, lambda h: f"R={h[0]:g}")
    ratio = budget_ratio(built.report)
    built.report.extra["max_drop_search"] = {
        "max_drop": guard.max_drop, "minimize": "latency", "bisection": [LOW, 1.0, STEPS],
        "refit_images": len(fit), "measured_on": f"{len(x)} {source}",
        "confirmed_on": f"{len(parts.confirm_x)} {parts.confirm_source()}",
        "confirmations": looks, "tried": tried,
        "chosen": {"R": chosen[0], "ratio": ratio, "confirmed_drop": measured.to_dict(),
                   "file_size": built.report.file_size_after}}
    return built, measured


__all__ = ["GRID", "LOW", "STEPS", "budget_ratio", "fastest_search"]
