"""``--budget-blocks``: remove whole residual blocks before cutting channels
(docs/budget.md, "Removing whole blocks").

1. Every removable block (:mod:`..graph.blocks`) is scored by the relative output error
   of the original with that block alone removed, on the first calibration images
   (:func:`.importance.model_outputs`), per multiply-add it removes:
   ``e_b / (macs_b / macs)``. Least first; ties by name (deterministic).
2. The fewest blocks, taken in that order, whose removal measures at most R at every
   timing point (whole models against the reference, interleaved), found by bisection
   on the count: time falls with every block removed.
3. When even every removable block removed stays over R, they are all removed and the
   channel budget cuts the rest (its target ``R / ratio`` of the model without them).

Why blocks first and not blocks mixed with channel cuts in one allocation: the two
costs are not in one unit (a block's output error against the indicator mass of
channels), and on the authors' ResNet-56 at batch 64 a block costs far less than the
channels that save as much time: at R = 0.6 float, 76.9% on the 10,000 test images
after ``act`` with 11 blocks removed, against 68.0% with channels (83.3% original); in
INT8 the channels cannot go below 0.87x of onnxruntime's INT8, 13 blocks reach 0.61x
(docs/results.md, "Removing whole blocks").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import ModelError, OptionError
from ..graph.blocks import Block, removable_blocks, remove_blocks
from ..graph.count import conv_counts
from ..graph.inputs import fixed_batch, unbatched, whole_batches
from ..progress import bar
from .importance import MAX_ERROR, SENSITIVITY_IMAGES, model_outputs, relative_error


@dataclass
class Depth:
    """The blocks removed and how they were chosen (the report's ``blocks``)."""

    removed: list[str]
    ratio: dict[str, float] | None  # measured, blocks removed, against the reference
    scores: dict[str, dict] = field(default_factory=dict)  # block -> error, macs share
    rounds: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"removed": list(self.removed), "ratio": self.ratio, "scores": self.scores,
                "rounds": self.rounds}


def block_scores(model: onnx.ModelProto, images: np.ndarray, quiet: bool = False,
                 blocks: list[Block] | None = None) -> dict[str, dict]:
    """Block name -> {error, macs_share, score}: the relative output error with that
    block alone removed, its share of the Conv multiply-adds, and ``error / share``
    (``blocks``: :func:`removable_blocks` of ``model``, when the caller has them)."""
    if unbatched(model):
        raise OptionError("--budget-blocks", "needs a model whose input has a batch axis "
                                             "(its outputs are set against the original's "
                                             "value by value)")
    blocks = removable_blocks(model) if blocks is None else blocks
    if not blocks:
        raise ModelError("--budget-blocks: no removable residual block in this model (an "
                         "Add of a tensor and a branch of Convs that reads only it)")
    batch = fixed_batch(model) or 1
    x = whole_batches(np.asarray(images[:SENSITIVITY_IMAGES], dtype=np.float32), batch)
    reference = model_outputs(model, x, batch)
    total = conv_counts(model)["macs"]
    scores = {}
    progress = bar(len(blocks), "budget blocks", unit="block", quiet=quiet, lines=True)
    for block in blocks:
        without = remove_blocks(model, [block.name], blocks)
        error = min(relative_error(reference, model_outputs(without, x, batch)), MAX_ERROR)
        after = conv_counts(without)["macs"]
        share = (total - after) / total if total and after is not None else None
        share = share if share and share > 0 else 1.0 / len(blocks)  # unknown: even shares
        scores[block.name] = {"error": round(error, 6), "macs_share": round(share, 6),
                              "score": error / share}
        progress.update()
    progress.close()
    return scores


def choose_blocks(scores: dict[str, dict], target: float, measure) -> Depth:
    """The fewest blocks, least score first, whose removal ``measure(names)`` (point ->
    ratio against the reference) puts under ``target`` at every point; every block when
    none does (the report's ratio then says how far that got)."""
    order = sorted(scores, key=lambda n: (scores[n]["score"], n))
    depth = Depth([], None, {n: {k: v for k, v in s.items() if k != "score"}
                             for n, s in scores.items()})

    def timed(k: int) -> float:
        ratios = measure(order[:k])
        depth.rounds.append({"blocks": k, "ratio": ratios})
        return ratios

    every = timed(len(order))
    if max(every.values()) > target:
        depth.removed, depth.ratio = order, every
        return depth
    low, high, best = 0, len(order), every  # high: a count known to be under target
    while high - low > 1:
        mid = (low + high) // 2
        ratios = timed(mid)
        if max(ratios.values()) <= target:
            high, best = mid, ratios
        else:
            low = mid
    depth.removed, depth.ratio = order[:high], best
    return depth
