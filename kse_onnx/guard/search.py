"""``--max-drop D``: the smallest model whose measured drop is at most D points.

Search (greedy relaxation over a G/T ladder):

1. the calibration images are split: the first ``1 - holdout`` refit the model, the
   rest (or ``--validation`` data, with labels) measure the drop; the refit never sees them;
2. for each (G, T) of ``LADDER``, most aggressive first, every eligible Conv's
   sensitivity is measured alone: the original with only that layer's W_hat, its
   relative output error on the held-out images (one forward pass per layer, no refit);
3. the model compressed at (G, T) with the ``k`` most sensitive layers left whole is
   built in full (refit included) and measured; ``k`` is the smallest that holds the
   drop, found by bisection (the drop falls as layers are left whole);
4. the smallest file that holds the drop wins; the ladder stops at the first (G, T)
   that holds it with no layer left whole (gentler ones are larger).

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
    """(the smallest candidate whose drop is at most ``guard.max_drop``, its Drop); an
    OptionError naming the best drop reached when none is."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    quiet = getattr(builder.settings.get("progress"), "quiet", False)
    say = (lambda line: None) if quiet else log
    fit, x, y, source = split(images, guard, data)
    reference = outputs(builder.source, x, "the original")
    base = builder.settings.get("kse") or KSEOptions()
    select = builder.settings.get("select") or SelectOptions()
    tried, best = [], None  # best: (file size, built, drop)

    def build(kse, ranked, k):
        skip = tuple(escape(name) for name, _ in ranked[:k])
        built = builder(fit, kse, skip)
        measured = drop(reference, outputs(built.model, x, "a candidate"), y, source)
        tried.append({"G": kse.G, "T": kse.T, "layers_left_whole": [n for n, _ in ranked[:k]],
                      "drop": measured.to_dict(), "file_size": built.report.file_size_after})
        say(f"max-drop search: G={kse.G} T={kse.T}, {k} layer(s) left whole: "
            f"{measured.line()}")
        return built, measured

    def keep(built, measured):
        nonlocal best
        if measured.points <= guard.max_drop and (
                best is None or built.report.file_size_after < best[0]):
            best = (built.report.file_size_after, built, measured)

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
    _, built, measured = best
    chosen = next(t for t in tried if t["file_size"] == best[0]
                  and t["drop"]["points"] == measured.to_dict()["points"])
    built.report.extra["max_drop_search"] = {
        "max_drop": guard.max_drop, "ladder": [list(p) for p in LADDER],
        "refit_images": len(fit), "measured_on": f"{len(x)} {source}", "tried": tried,
        "chosen": chosen}
    return built, measured


def guarded_budget(builder: Builder, images, guard: GuardOptions, data: DataOptions | None,
                   target: float):
    """``--target-latency R --max-drop D``: the budget's model at R, refitted on the
    calibration images the guard does not hold out, and its drop measured on those it
    does; (built, Drop) when the drop is at most D, else a ModelError naming the pair
    reached (R and its measured ratio, the drop), nothing written. No search over R:
    each R is a full latency search of its own (minutes), so the pair is checked, and
    the user lowers D or raises R."""
    fit, x, y, source = split(images, guard, data)
    built = builder(fit, builder.settings.get("kse") or KSEOptions(), ())
    measured = drop(outputs(builder.source, x, "the original"),
                    outputs(built.model, x, "the compressed model"), y, source)
    if measured.points <= guard.max_drop:
        return built, measured
    budget = built.report.extra.get("budget") or {}
    met = [max(r["ratio"].values()) for r in budget.get("measured") or []
           if isinstance(r.get("ratio"), dict) and r["ratio"]
           and r.get("indicator_mass_kept") == budget.get("indicator_mass_kept")]
    speed = f" (measured {min(met):.3f}x)" if met else ""
    raise ModelError(f"--target-latency {target:g} --max-drop {guard.max_drop:g}: the best "
                     f"pair reached is R = {target:g}{speed} with a drop of "
                     f"{measured.points:.2f} points on the {len(x)} {source}; raise "
                     "--target-latency or --max-drop; nothing written")


__all__ = ["Builder", "Drop", "guarded_budget", "guarded_search", "sensitivity", "split"]
