"""KSE plan of one Conv weight: scores, levels, shared kernels and the effective weight.

Degenerate layers are never an error: they come back unchanged (every channel whole,
``W_hat == W``) with ``reason`` saying why, so callers report them and move on:
- ``N <= knn_k``: too few kernels per channel for the entropy's k nearest neighbours;
- ``C == 1`` or every channel's indicator ties: nothing ranks one channel below another;
- every channel lands on the top level (e.g. ``G == 1`` with ties): nothing to do;
- non-finite weights: scores would be meaningless.
``G == 2`` prunes without clustering; ``G == 1`` keeps only the channels with v = 1.
"""

from __future__ import annotations

import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..options import KSEOptions
from . import kse
from .cluster import kmeans, ward_tree

# Upper bound on the float64 working set of one k-means batch (points x centres).
_KMEANS_BATCH_ELEMENTS = 4_000_000


@dataclass
class LayerPlan:
    """What KSE does to one weight of shape (N, C, kh, kw)."""

    weight_shape: tuple[int, ...]
    sparsity: np.ndarray  # (C,)
    entropy: np.ndarray  # (C,)
    indicator: np.ndarray  # (C,)
    levels: np.ndarray  # (C,) 0 = pruned, G-1 = whole
    q: np.ndarray  # (C,) kernels kept per channel
    labels: np.ndarray  # (N, C) index into kernels[c]; -1 for pruned channels
    kernels: list[np.ndarray] = field(repr=False)  # kernels[c]: (q_c, kh, kw)
    w_hat: np.ndarray = field(repr=False)  # (N, C, kh, kw)
    reason: str | None = None  # why the layer is left unchanged, None if compressed

    @property
    def compressed(self) -> bool:
        return self.reason is None

    @property
    def kept_channels(self) -> np.ndarray:
        return np.flatnonzero(self.q > 0)


def worker_threads() -> int:
    """Threads for the per-channel work: ``KSE_ONNX_THREADS`` or one per core. The result
    does not depend on it (tests/test_determinism.py)."""
    value = os.environ.get("KSE_ONNX_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def layer_seed(seed: int, key: str) -> np.random.Generator:
    """Generator for one layer: independent of the order in which layers are analysed."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def plan_layer(weight: np.ndarray, options: KSEOptions, key: str = "",
               kept: np.ndarray | None = None) -> LayerPlan:
    """Score, level and cluster ``weight`` (N, C, kh, kw); ``key`` names the layer for its seed.

    ``kept`` (input channel indices) overrides the pruning: exactly those channels are
    kept, each at its KSE level but at least level 1 (clustered as usual), the others
    pruned (the latency budget, docs/budget.md)."""
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D Conv weight, got shape {weight.shape}")
    if weight.dtype.kind != "f":  # bfloat16 (ml_dtypes): analyse in float32, keep dtype
        plan = plan_layer(weight.astype(np.float32), options, key, kept)
        plan.w_hat = plan.w_hat.astype(weight.dtype)
        plan.kernels = [k.astype(weight.dtype) for k in plan.kernels]
        return plan
    n, c = weight.shape[:2]
    if not np.all(np.isfinite(weight)):
        return _unchanged(weight, options, "weight has NaN or infinite values")
    if n <= options.knn_k:
        return _unchanged(weight, options, f"too few output filters (N={n} <= K={options.knn_k}) "
                                           "for the kernel entropy")
    if c == 1:
        return _unchanged(weight, options, "single input channel: nothing to rank")

    with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
        return _plan(weight, options, key, pool, kept)


def _plan(weight, options: KSEOptions, key: str, pool, kept=None) -> LayerPlan:
    n, c = weight.shape[:2]
    channel_sets = kse.channel_kernel_sets(weight)  # (C, N, D)
    entropy_sets = (kse.official_kernel_sets(weight) if options.entropy == "official"
                    else channel_sets)
    trees = None
    if options.kmeans_init == "ward" and channel_sets.shape[2] > 1:
        # Ward trees do not depend on the levels: build them all now in one task, which
        # holds the GIL, while the other threads run the kd-tree queries, which release it.
        trees = pool.submit(lambda: [ward_tree(s) for s in channel_sets])
    sparsity, entropy, indicator = _scores(weight, entropy_sets, options, pool)
    if indicator is None:
        return _unchanged(weight, options, "every channel's indicator ties", sparsity, entropy)
    levels, q = kse.levels_and_counts(indicator, n, options.G, options.T)
    if kept is not None:
        levels, q = override_kept(levels, q, kept, n, options)
    if np.all(q == n):  # (not ``levels == G-1``: at G = 1 that level also prunes)
        return _unchanged(weight, options, "every channel kept whole at this G", sparsity, entropy)

    rng = layer_seed(options.seed, key)
    trees = None if trees is None else trees.result()
    labels, kernels = _share_kernels(weight, channel_sets, levels, q, options, rng, trees)
    if kept is not None:
        # a budget masks the filters of pruned stream channels to 0: they stay 0 (no
        # shared kernel), so the refit and verify see the channel the lowering drops
        dead = ~weight.reshape(n, -1).any(axis=1)
        labels[dead] = np.minimum(labels[dead], -1)
    w_hat = effective_weight(weight.shape, weight.dtype, labels, kernels)
    return LayerPlan(weight.shape, sparsity, entropy, indicator, levels, q, labels, kernels, w_hat)


def override_kept(levels, q, kept, n: int, options: KSEOptions):
    """Levels and q with exactly ``kept`` channels kept: pruned ones there go to level 1
    (``q = ceil(N * 2**(2-T-G))``, or N when level 1 is the top), the others to level 0."""
    index = np.asarray(kept)
    if (index.ndim != 1 or not len(index) or index.dtype.kind not in "iu"
            or index.min() < 0 or index.max() >= len(q)):
        raise ValueError(f"kept channels must be 1 to {len(q)} indices in [0, {len(q)})")
    mask = np.zeros(len(q), dtype=bool)
    mask[index] = True
    levels, q = levels.copy(), q.copy()
    lift = mask & (q == 0)
    levels[lift] = min(1, options.G - 1)
    q[lift] = n if options.G <= 2 else math.ceil(n * 2.0 ** (2 - options.T - options.G))
    levels[~mask], q[~mask] = 0, 0
    return levels, q


def _scores(weight, entropy_sets, options: KSEOptions, pool):
    """(sparsity, entropy, indicator) of every input channel; indicator None on a tie."""
    densities = kse.submit_densities(pool, entropy_sets, options.knn_k)
    sparsity = kse.kernel_sparsity(weight)
    entropy = kse.kernel_entropy(entropy_sets, options.knn_k, densities)
    raw = np.sqrt(kse.minmax(sparsity) / (1.0 + options.alpha * kse.minmax(entropy)))
    if raw.max() <= raw.min():
        return sparsity, entropy, None
    return sparsity, entropy, kse.minmax(raw)


def layer_indicator(weight: np.ndarray, options: KSEOptions) -> np.ndarray | None:
    """The KSE indicator v of every input channel of ``weight``, without clustering; None
    for the degenerate layers :func:`plan_layer` leaves unchanged."""
    weight = weight if weight.dtype.kind == "f" else weight.astype(np.float32)
    n, c = weight.shape[:2]
    if not np.all(np.isfinite(weight)) or n <= options.knn_k or c == 1:
        return None
    sets = (kse.official_kernel_sets(weight) if options.entropy == "official"
            else kse.channel_kernel_sets(weight))
    with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
        return _scores(weight, sets, options, pool)[2]


def _share_kernels(weight, sets, levels, q, options, rng, trees):
    """Labels (N, C) and per-channel kernel lists: whole channels keep their N kernels,
    clustered channels get k-means centroids, pruned channels none."""
    n, c, kh, kw = weight.shape
    labels = np.full((n, c), -1, dtype=np.int64)
    kernels = [np.zeros((0, kh, kw), weight.dtype) for _ in range(c)]
    for ch in np.flatnonzero(q == n):
        labels[:, ch] = np.arange(n)
        kernels[ch] = weight[:, ch].copy()
    for level in np.unique(levels[(q > 0) & (q < n)]):
        channels = np.flatnonzero(levels == level)
        k = int(q[channels[0]])
        # the 1-D path (cluster.lloyd_1d) holds a few (N,) rows per problem, not (N, q)
        width = 8 if sets.shape[2] == 1 and options.kmeans_init == "ward" else max(k, 8)
        step = max(1, _KMEANS_BATCH_ELEMENTS // (n * width))
        for start in range(0, len(channels), step):
            chunk = channels[start:start + step]
            result = kmeans(sets[chunk], k, rng, options.kmeans_init, options.kmeans_restarts,
                            options.kmeans_max_iter,
                            trees=None if trees is None else [trees[ch] for ch in chunk])
            for i, ch in enumerate(chunk):
                labels[:, ch] = result.labels[i]
                kernels[ch] = result.centroids[i].reshape(k, kh, kw).astype(weight.dtype)
    return labels, kernels


def effective_weight(shape, dtype, labels, kernels) -> np.ndarray:
    """``W_hat[n, c] = kernels[c][labels[n, c]]``; zero where ``labels`` is -1 (a pruned
    channel, or a filter a latency budget zeroed)."""
    w_hat = np.zeros(shape, dtype=dtype)
    for ch, table in enumerate(kernels):
        if len(table):
            rows = labels[:, ch] >= 0
            w_hat[rows, ch] = table[labels[rows, ch]]
    return w_hat


def _unchanged(weight, options: KSEOptions, reason: str, sparsity=None, entropy=None) -> LayerPlan:
    n, c = weight.shape[:2]
    zeros = np.zeros(c)
    return LayerPlan(
        weight_shape=weight.shape,
        sparsity=zeros if sparsity is None else sparsity,
        entropy=zeros if entropy is None else entropy,
        indicator=np.ones(c),
        levels=np.full(c, options.G - 1, dtype=np.int64),
        q=np.full(c, n, dtype=np.int64),
        labels=np.repeat(np.arange(n)[:, None], c, axis=1),
        kernels=[weight[:, ch].copy() for ch in range(c)],
        w_hat=weight.copy(),
        reason=reason,
    )
