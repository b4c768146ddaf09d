"""``--max-drop D``: the smallest model whose measured drop is at most D points.

Search (greedy per-layer settings, :mod:`.layerwise`):

1. the calibration images are split: the first ``1 - holdout`` refit the model, the
   rest (or ``--validation`` data, with labels) measure the drop; the refit never sees
   them; they are cut again into selection and confirmation images (:mod:`.confirm`);
2. each eligible Conv's options, the (G, T) of ``LADDER`` and whole, are priced: the
   relative output error of the original with only that layer's W_hat (one forward pass
   per layer and setting, no refit, on the selection images) and the bytes of its weight;
3. a path of states, from every layer at (5, 1) to every layer whole, moves one layer
   at a time to the gentler option with the largest fall of error per byte added;
4. the first state on the path that holds the drop is found by bisection, each state
   built in full (refit included) and measured on the selection images; the smallest
   file among the states that held is the choice;
5. its drop is measured again on the confirmation images, which neither the refit nor
   the choice saw: that drop is the one reported and held to D.

Why this search: pricing each layer without the refit costs one forward pass, where a
refit per layer and setting would cost minutes each; a misranked layer costs file size,
never accuracy, because every candidate is judged by a full build measured on held-out
images. Per-layer settings are recorded as ``--layer-gt GLOB=G,T`` and layers left whole
as ``--skip`` globs, so ``verify`` and ``refit`` replay the result like any other.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import ModelError, OptionError
from ..options import DataOptions, GuardOptions, KSEOptions, SelectOptions
from .confirm import confirmed, cut
from .fastest import budget_ratio, fastest_search
from .layerwise import LADDER, layer_options, settings_of, upgrade_path
from .measure import Drop, drop, outputs

MIN_HELD_OUT = 32
SENSITIVITY_IMAGES = 256


@dataclass
class Builder:
    """Builds one candidate: ``compress(source, where, size, images=..., **settings)``."""

    compress: object
    source: onnx.ModelProto
    where: str
    size: int
    settings: dict

    def __call__(self, images, kse: KSEOptions, skip: tuple[str, ...],
                 layer_gt: tuple[str, ...] = ()):
        select = self.settings.get("select") or SelectOptions()
        select = dataclasses.replace(select, skip=tuple(select.skip) + skip,
                                     layer_gt=layer_gt)
        return self.compress(self.source, self.where, self.size, images=images,
                             **{**self.settings, "kse": kse, "select": select})


def split(images, guard: GuardOptions, data: DataOptions | None):
    """(refit images, measured images, their labels or None, where they come from)."""
    if images is None:
        raise OptionError("--max-drop", "needs --calibration images (unlabeled) to refit on "
                          "and to measure the drop on")
    if guard.validation:
        from ..data import load_data

        x, y = load_data(guard.validation, data or DataOptions())
        if y is None:
            raise OptionError("--validation", f"{guard.validation}: holds no labels")
        if not np.all(np.isfinite(x)):
            raise OptionError("--validation", f"{guard.validation}: images hold NaN or "
                              "infinite values")
        return images, x, np.asarray(y), "validation images"
    held = int(math.ceil(len(images) * guard.holdout))
    if held < MIN_HELD_OUT or len(images) - held < 1:
        raise OptionError("--max-drop", f"{len(images)} calibration images leave "
                          f"{held} held out; at least {MIN_HELD_OUT} are needed (more "
                          "--calibration-images, a larger --holdout, or --validation)")
    return images[:-held], images[-held:], None, "held-out calibration images"


def guarded_search(builder: Builder, images, guard: GuardOptions, data: DataOptions | None,
                   log=None):
    """(the smallest candidate whose drop is at most ``guard.max_drop`` on the selection
    images and then on the confirmation images (:mod:`.confirm`), its confirmation Drop);
    an error naming the best drop reached when none is. ``--minimize latency``: the
    fastest model instead (:mod:`.fastest`)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    quiet = getattr(builder.settings.get("progress"), "quiet", False)
    say = (lambda line: None) if quiet else log
    fit, x, y, source = split(images, guard, data)
    parts = cut(x, y, guard.confirm, source)
    if guard.minimize == "latency":
        return fastest_search(builder, fit, parts, guard, say)
    x, y = parts.select_x, parts.select_y
    reference = outputs(builder.source, x, "the original")
    base = dataclasses.replace(builder.settings.get("kse") or KSEOptions(), G=LADDER[0][0],
                               T=LADDER[0][1])
    select = builder.settings.get("select") or SelectOptions()
    options = layer_options(builder.source, base, select, x[:SENSITIVITY_IMAGES], reference)
    path = upgrade_path(options)
    say(f"max-drop search: {len(options)} layers priced at {len(LADDER)} settings and "
        f"whole; a path of {len(path)} states")
    tried, held, best = [], [], None  # held: (file size, order, state, entry)

    def build(step):
        layer_gt, skip, chosen = settings_of(options, path[step])
        built = builder(fit, base, skip, layer_gt)
        measured = drop(reference, outputs(built.model, x, "a candidate"), y, source)
        entry = {"step": step, "G": base.G, "T": base.T,
                 "layers_left_whole": sorted(n for n, c in chosen.items() if c == "whole"),
                 "layer_gt": {n: c for n, c in chosen.items() if c != "whole"},
                 "drop": measured.to_dict(), "file_size": built.report.file_size_after}
        tried.append(entry)
        say(f"max-drop search: state {step}/{len(path) - 1} ({len(entry['layer_gt'])} "
            f"layer(s) gentler, {len(entry['layers_left_whole'])} whole): {measured.line()}")
        holds = measured.points <= guard.max_drop
        if holds:
            held.append((built.report.file_size_after, len(tried), step, entry))
            keep(built)
        return holds

    def keep(built):
        nonlocal best
        if best is None or built.report.file_size_after < best[0]:
            best = (built.report.file_size_after, built, len(tried))

    lo, hi = 0, len(path) - 1  # lo fails; hi (every layer whole) assumed to hold
    if not build(0):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if build(mid) else (mid, hi)
    if best is None:
        finite = [t for t in tried if t["drop"]["points"] is not None]
        closest = min(finite, key=lambda t: t["drop"]["points"]) if finite else None
        reached = ("no candidate ran" if closest is None else
                   f"the best drop reached was {closest['drop']['points']:.2f} points "
                   f"({len(closest['layer_gt'])} layers at a gentler G/T, "
                   f"{len(closest['layers_left_whole'])} left whole)")
        raise ModelError(f"--max-drop {guard.max_drop:g}: no setting holds the drop on the "
                         f"{len(x)} {source}; {reached}; nothing written")

    def rebuild(candidate):
        _, order, step, _ = candidate
        if order == best[2]:
            return best[1]
        layer_gt, skip, _ = settings_of(options, path[step])
        return builder(fit, base, skip, layer_gt)

    def named(candidate):
        return f"state {candidate[2]}"

    held.sort(key=lambda h: h[:2])  # the smallest file first
    built, candidate, measured, looks = confirmed(builder.source, held, rebuild, parts,
                                                  guard.max_drop, say, named)
    built.report.extra["max_drop_search"] = {
        "max_drop": guard.max_drop, "ladder": [list(p) for p in LADDER],
        "path_states": len(path), "refit_images": len(fit), "measured_on": f"{len(x)} {source}",
        "confirmed_on": f"{len(parts.confirm_x)} {parts.confirm_source()}",
        "confirmations": looks, "tried": tried,
        "chosen": {**candidate[3], "confirmed_drop": measured.to_dict()}}
    return built, measured


def guarded_budget(builder: Builder, images, guard: GuardOptions, data: DataOptions | None,
                   target: float):
    """``--target-latency R --max-drop D``: the budget's model at R, refitted on the
    calibration images the guard does not hold out, and its drop measured on those it
    does; (built, Drop) when the drop is at most D, else a ModelError naming the pair
    reached (R and its measured ratio, the drop), nothing written. One R, so no
    selection and no confirmation: every held-out image measures it. The search over R
    is ``--minimize latency`` (:mod:`.fastest`)."""
    if guard.minimize == "latency":
        raise OptionError("--minimize", "latency searches --target-latency itself: give "
                                        "--max-drop without --target-latency")
    fit, x, y, source = split(images, guard, data)
    built = builder(fit, builder.settings.get("kse") or KSEOptions(), ())
    measured = drop(outputs(builder.source, x, "the original"),
                    outputs(built.model, x, "the compressed model"), y, source)
    if measured.points <= guard.max_drop:
        return built, measured
    ratio = budget_ratio(built.report)
    speed = "" if ratio is None else f" (measured {ratio:.3f}x)"
    raise ModelError(f"--target-latency {target:g} --max-drop {guard.max_drop:g}: the best "
                     f"pair reached is R = {target:g}{speed} with a drop of "
                     f"{measured.points:.2f} points on the {len(x)} {source}; raise "
                     "--target-latency or --max-drop; nothing written")


__all__ = ["LADDER", "Builder", "Drop", "guarded_budget", "guarded_search", "split"]
