"""Target-driven settings: the G and T that reach a multiply-add or file-size target
while removing the least indicator mass.

A layer's levels and kernel counts q follow from its indicator v alone (docs/algorithm.md,
section 4), so every (G, T) of the grid is costed without clustering:
- multiply-adds, the paper's count: ``sum_c q_c*kh*kw*H*W`` for a compressed layer,
  ``N*C*kh*kw*H*W`` for any other Conv;
- file size, with the weights stored in the compact form: the original file, less each
  compressed weight's bytes, plus its stored bytes ``min(dense over kept channels,
  (Q + 1) kernels + N*C' codes)`` (the +1 is the zero kernel of pruned channels);
- removed indicator mass ``sum_c v_c * (1 - q_c / N)``: a pruned channel loses all of
  its v, a channel kept whole none, a clustered one the fraction of kernels it drops.
The setting that meets every target with the least removed mass wins (ties: the
smaller G, then T); no setting meeting it is an error naming the best reachable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import OptionError
from ..options import KSEOptions, TargetOptions
from .kse import levels_and_counts
from .plan import layer_indicator

G_RANGE = range(3, 9)  # G = 2 prunes without sharing: not KSE


@dataclass
class LevelChoice:
    G: int
    T: int
    macs: float  # fraction of the original conv multiply-adds (paper's count)
    size: float  # predicted fraction of the original file (compact storage)
    removed_mass: float
    target_macs: float
    target_size: float

    def to_dict(self) -> dict:
        return {**asdict(self), "predicted_file_size": self.size}


def choose_levels(layers, eligible: set[str], options: KSEOptions, target: TargetOptions,
                  file_size: int) -> LevelChoice:
    """``layers``: (name, weight, output H*W) of every Conv with a 4-D constant weight;
    ``eligible``: the names KSE may compress."""
    scored = []
    macs_before, bytes_before = 0, 0
    for name, weight, hw in layers:
        n, c, kh, kw = weight.shape
        macs_before += n * c * kh * kw * (hw or 0)
        v = layer_indicator(weight, options) if name in eligible else None
        if v is not None:
            bytes_before += weight.nbytes
            scored.append((weight.shape, weight.itemsize, hw or 0, v))
    if macs_before == 0:
        raise OptionError("--target-macs", "the model's conv output sizes are unknown")
    results = []
    for G in G_RANGE:
        for T in range(G):
            results.append(_cost(G, T, scored, macs_before, bytes_before, file_size, target))
    meets = [r for r in results if _meets(r, target)]
    if not meets:
        flag = "--target-macs" if target.target_macs else "--target-size"
        low = min(results, key=lambda r: (r.macs if target.target_macs else r.size))
        raise OptionError(flag, f"cannot be reached by any G in {G_RANGE.start}.."
                                f"{G_RANGE.stop - 1}: the lowest is multiply-adds "
                                f"{low.macs:.3f}, file {low.size:.3f} at G={low.G},T={low.T}")
    return min(meets, key=lambda r: (r.removed_mass, r.G, r.T))


def _meets(result: LevelChoice, target: TargetOptions) -> bool:
    return ((not target.target_macs or result.macs <= target.target_macs)
            and (not target.target_size or result.size <= target.target_size))


def _cost(G, T, scored, macs_before, bytes_before, file_size, target) -> LevelChoice:
    macs_saved, stored, removed = 0, 0, 0.0
    for (n, c, kh, kw), itemsize, hw, v in scored:
        levels, q = levels_and_counts(v, n, G, T)
        if np.all(q == n):  # plan_layer leaves such a layer unchanged
            stored += n * c * kh * kw * itemsize
            continue
        kept = int((q > 0).sum())
        macs_saved += (n * c - int(q.sum())) * kh * kw * hw
        codes = n * kept * (1 if q.sum() + 1 <= 256 else 2)
        stored += min(n * kept * kh * kw * itemsize, (int(q.sum()) + 1) * kh * kw * itemsize
                      + codes)
        removed += float(np.sum(v * (1 - q / n)))
    size = (file_size - bytes_before + stored) / file_size
    return LevelChoice(G, T, 1 - macs_saved / macs_before, size, removed,
                       target.target_macs, target.target_size)
