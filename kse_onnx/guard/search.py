"""``--max-drop D``: the smallest model whose measured drop is at most D points.

Search (greedy relaxation over a G/T ladder):

1. the calibration images are split: the first ``1 - holdout`` refit the model, the
   rest (or ``--validation`` data, with labels) measure the drop; the refit never sees
   them; they are cut again into selection and confirmation images;
2. for each (G, T) of ``LADDER``, most aggressive first, every eligible Conv's
   sensitivity is measured alone: the original with only that layer's W_hat, its
   relative output error on the held-out images (one forward pass per layer, no refit);
3. the model compressed at (G, T) with the ``k`` most sensitive layers left whole is
   built in full (refit included) and measured; ``k`` is the smallest that holds the
   drop, found by bisection (the drop falls as layers are left whole);
4. the smallest file that holds the drop on the selection images wins; the ladder stops
   at the first (G, T) that holds it with no layer left whole (gentler ones are larger);
5. the winner's drop is measured again on the confirmation images (the last ``--confirm``
   of the held-out ones), which neither the refit nor the choice saw: that drop is the
   one reported and held to D (:mod:`.confirm`: the winner's curse, the statistics).

Why this search: per-layer sensitivity without the refit costs one forward pass per
layer, where a refit per layer and setting would cost minutes each; a misranked layer
costs file size, never accuracy, because every candidate is judged by a full build
measured on held-out images. Layers left whole are recorded as ``--skip`` globs, so
``verify`` and ``refit`` replay the result like any other.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

import numpy as np
import onnx

from ..analysis.model import analyse
from ..errors import ModelError, OptionError
from ..options import DataOptions, GuardOptions, KSEOptions, SelectOptions
from .confirm import confirmed, cut
from .fastest import budget_ratio, fastest_search
from .measure import Drop, drop, outputs

LADDER = ((5, 1), (4, 1), (5, 0), (4, 0), (3, 0))  # (G, T), smallest files first
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

    def __call__(self, images, kse: KSEOptions, skip: tuple[str, ...]):
        select = self.settings.get("select") or SelectOptions()
        select = dataclasses.replace(select, skip=tuple(select.skip) + skip)
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


def escape(name: str) -> str:
    """A glob matching exactly ``name`` (``[``, ``*`` and ``?`` taken literally)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in name)


def sensitivity(source: onnx.ModelProto, kse: KSEOptions, select: SelectOptions,
                x: np.ndarray, reference: list) -> list[tuple[str, float]]:
    """Eligible layers, most sensitive first: the relative output error of the original
    with only that layer's weight replaced by its W_hat."""
    result = analyse(source, kse, select)
    weights = {n.name: n.input[1] for n in source.graph.node if n.op_type == "Conv"}
    inits = {i.name for i in source.graph.initializer}
    scores = []
    for name, plan in sorted(result.plans.items()):
        if not plan.compressed or weights.get(name) not in inits:
            continue
        probe = onnx.ModelProto()
        probe.CopyFrom(source)
        tensor = next(i for i in probe.graph.initializer if i.name == weights[name])
        tensor.CopyFrom(onnx.numpy_helper.from_array(
            plan.w_hat.astype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)),
            tensor.name))
        scores.append((name, drop(reference, outputs(probe, x, name)).rel_error))
    return sorted(scores, key=lambda s: (-s[1], s[0]))


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
    base = builder.settings.get("kse") or KSEOptions()
    select = builder.settings.get("select") or SelectOptions()
    tried, held, best = [], [], None  # held: (file size, order, kse, skip, entry)

    def build(kse, ranked, k):
        skip = tuple(escape(name) for name, _ in ranked[:k])
        built = builder(fit, kse, skip)
        measured = drop(reference, outputs(built.model, x, "a candidate"), y, source)
        entry = {"G": kse.G, "T": kse.T, "layers_left_whole": [n for n, _ in ranked[:k]],
                 "drop": measured.to_dict(), "file_size": built.report.file_size_after}
        tried.append(entry)
        say(f"max-drop search: G={kse.G} T={kse.T}, {k} layer(s) left whole: "
            f"{measured.line()}")
        if measured.points <= guard.max_drop:
            held.append((built.report.file_size_after, len(tried), kse, skip, entry))
        return built, measured

    def keep(built, measured):
        nonlocal best
        if measured.points <= guard.max_drop and (
                best is None or built.report.file_size_after < best[0]):
            best = (built.report.file_size_after, built, len(tried))

    for G, T in LADDER:
        kse = dataclasses.replace(base, G=G, T=T)
        ranked = sensitivity(builder.source, kse, select, x[:SENSITIVITY_IMAGES], reference)
        built, measured = build(kse, ranked, 0)
        keep(built, measured)
        if measured.points <= guard.max_drop:
            break
        lo, hi = 0, len(ranked)  # lo fails; hi (all whole) assumed to hold
        while hi - lo > 1:
            mid = (lo + hi) // 2
            built, measured = build(kse, ranked, mid)
            keep(built, measured)
            lo, hi = (lo, mid) if measured.points <= guard.max_drop else (mid, hi)
    if best is None:
        finite = [t for t in tried if t["drop"]["points"] is not None]
        closest = min(finite, key=lambda t: t["drop"]["points"]) if finite else None
        reached = ("no candidate ran" if closest is None else
                   f"the best drop reached was {closest['drop']['points']:.2f} points "
                   f"(G={closest['G']} T={closest['T']}, "
                   f"{len(closest['layers_left_whole'])} layers left whole)")
        raise ModelError(f"--max-drop {guard.max_drop:g}: no setting holds the drop on the "
                         f"{len(x)} {source}; {reached}; nothing written")

    def rebuild(candidate):
        _, order, kse, skip, _ = candidate
        return best[1] if order == best[2] else builder(fit, kse, skip)

    def named(candidate):
        entry = candidate[4]
        return (f"G={entry['G']} T={entry['T']}, {len(entry['layers_left_whole'])} layer(s) "
                "left whole")

    built, candidate, measured, looks = confirmed(builder.source, sorted(held, key=lambda h: h[:2]),
                                                  rebuild, parts, guard.max_drop, say, named)
    built.report.extra["max_drop_search"] = {
        "max_drop": guard.max_drop, "ladder": [list(p) for p in LADDER],
        "refit_images": len(fit), "measured_on": f"{len(x)} {source}",
        "confirmed_on": f"{len(parts.confirm_x)} {parts.confirm_source()}",
        "confirmations": looks, "tried": tried,
        "chosen": {**candidate[4], "confirmed_drop": measured.to_dict()}}
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


__all__ = ["Builder", "Drop", "guarded_budget", "guarded_search", "sensitivity", "split"]
