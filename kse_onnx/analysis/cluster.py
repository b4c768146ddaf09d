"""Deterministic k-means of many small point sets at once (docs/algorithm.md, section 5).

Every channel of one KSE level has the same kernel count N and the same cluster count
q, so its problems are stacked into one ``(B, N, D)`` array; Lloyd iterations run on
the whole stack with numpy array operations instead of a Python loop of scikit-learn
``KMeans`` fits (the authors' code needs 56 s for one 128x128 layer that way).

The flavour, and why it is right for KSE's problems (N up to a few thousand kernels
in D = kh*kw <= 49 dimensions, q from 1 to N/2, so clusters hold 2 to N points):
- ``ward`` (default): Ward agglomerative clustering (scipy, O(N^2)) cut at q clusters
  as the start, then Lloyd to convergence. At q ~ N/2, where most of KSE's channels
  sit, random seeding must get hundreds of tiny clusters right at once and needs many
  restarts; Ward builds them bottom-up. On the authors' golden layer it reaches a 6-9%
  lower objective than scikit-learn's k-means++ with n_init=10, with no randomness at
  all, so the same input gives the same output on any machine.
- 1x1 kernels (D = 1) use a sorted 1-D Lloyd from companded quantiles: in one
  dimension clusters are intervals, so assignment is a binary search. Its objective is
  within 1.0-1.4x of scikit-learn's (10 restarts) on Gaussian data at q <= N/8 and up to
  2x at q = N/4, in a few ms per channel; Ward (O(N^2)) would cost 80 ms per channel at
  N = 2048. Improving it is left open.
- ``k-means++`` (the authors' flavour): greedy k-means++ seeding, best of ``restarts``
  runs, drawn from the seeded generator; kept for comparison with their code.
Empty clusters take the point farthest from its centre, so a channel with at least q
distinct kernels always ends with q distinct centroids in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (B, q, D) float64
    labels: np.ndarray  # (B, N) int64
    inertia: np.ndarray  # (B,) sum of squared distances to the assigned centroid


def squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``|x - c|^2`` for every point and centre: (B, N, D), (B, K, D) -> (B, N, K).

    Computed in float32: it only ranks centres for the assignment, and numpy's stacked
    float64 matmul runs ~30x slower than float32 here (no BLAS path for these shapes).
    Means and objectives stay in float64.
    """
    p32 = points.astype(np.float32)
    c32 = centres.astype(np.float32)
    d2 = np.matmul(p32, c32.transpose(0, 2, 1))
    d2 *= -2.0
    d2 += np.einsum("bnd,bnd->bn", p32, p32)[:, :, None]
    d2 += np.einsum("bkd,bkd->bk", c32, c32)[:, None, :]
    return np.maximum(d2, 0.0, out=d2)


def _draw(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices per row, drawn with probability proportional to ``weights``."""
    cumulative = np.cumsum(weights, axis=1)
    total = cumulative[:, -1:]
    targets = rng.random((weights.shape[0], count)) * total
    picks = np.empty((weights.shape[0], count), dtype=np.int64)
    for b in range(weights.shape[0]):  # searchsorted has no batched form
        picks[b] = np.searchsorted(cumulative[b], targets[b], side="right")
    # rows whose weights are all zero (every point is already a centre): any point
    return np.minimum(picks, weights.shape[1] - 1)


def kmeans_plus_plus(points: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ centres, shape (B, q, D)."""
    batch, n, _ = points.shape
    rows = np.arange(batch)
    trials = 2 + int(math.log(q))
    first = rng.integers(n, size=batch)
    centres = [points[rows, first]]
    closest = squared_distances(points, centres[0][:, None, :])[:, :, 0]
    for _ in range(1, q):
        candidates = _draw(closest, trials, rng)  # (B, L)
        cand_d2 = squared_distances(points, points[rows[:, None], candidates])  # (B, N, L)
        potential = np.minimum(cand_d2, closest[:, :, None]).sum(axis=1)  # (B, L)
        best = potential.argmin(axis=1)
        centres.append(points[rows, candidates[rows, best]])
        closest = np.minimum(closest, cand_d2[rows, :, best])
    return np.stack(centres, axis=1)


def _centroid_means(points, labels, q, fallback):
    """Mean of each cluster's points; an empty cluster keeps ``fallback``."""
    batch, n, d = points.shape
    flat = (labels + q * np.arange(batch)[:, None]).ravel()
    counts = np.bincount(flat, minlength=batch * q).reshape(batch, q)
    sums = np.stack(
        [np.bincount(flat, weights=points[:, :, j].ravel(), minlength=batch * q) for j in range(d)],
        axis=1,
    ).reshape(batch, q, d)
    means = np.where(counts[:, :, None] > 0, sums / np.maximum(counts, 1)[:, :, None], fallback)
    return means, counts


def _refill_empty(points, labels, d2_assigned, counts):
    """Give each empty cluster the point farthest from its centre (scikit-learn's rule)."""
    for b, k in zip(*np.nonzero(counts == 0), strict=True):
        far = int(d2_assigned[b].argmax())
        if d2_assigned[b, far] <= 0.0:
            continue  # every point sits on its centre: fewer distinct points than q
        counts[b, labels[b, far]] -= 1
        labels[b, far] = k
        counts[b, k] += 1
        d2_assigned[b, far] = 0.0


def lloyd(points, centres, max_iter: int) -> KMeansResult:
    """Lloyd iterations from ``centres``; a problem stops when its assignments stop changing.

    Only the problems still moving are recomputed: from a Ward start most settle in one
    or two iterations while a few take a dozen.
    """
    batch, n, _ = points.shape
    q = centres.shape[1]
    centres = centres.copy()
    labels = np.full((batch, n), -1, dtype=np.int64)
    active = np.arange(batch)
    for _ in range(max_iter):
        pts, old = points[active], labels[active]
        d2 = squared_distances(pts, centres[active])
        new = d2.argmin(axis=2)
        d2_assigned = np.take_along_axis(d2, new[:, :, None], axis=2)[:, :, 0]
        _, counts = _centroid_means(pts, new, q, centres[active])
        _refill_empty(pts, new, d2_assigned, counts)
        centres[active], _ = _centroid_means(pts, new, q, centres[active])
        labels[active] = new
        active = active[np.any(new != old, axis=1)]
        if active.size == 0:
            break
    rows = np.arange(batch)[:, None]
    diff = points - centres[rows, labels]
    inertia = np.einsum("bnd,bnd->b", diff, diff)
    return KMeansResult(centres, labels, inertia)


def ward_tree(points: np.ndarray) -> np.ndarray:
    """Ward dendrogram of one problem (N, D): scipy's linkage matrix; it does not depend
    on q, so it can be built before the levels are known."""
    return linkage(points, method="ward")


def ward_centres(points: np.ndarray, q: int, trees=None) -> np.ndarray:
    """Centroids of the Ward dendrograms cut at (at most) q clusters, shape (B, q, D).

    ``trees`` may hold each problem's dendrogram (or a future of it) already built."""
    batch, n, d = points.shape
    labels = np.empty((batch, n), dtype=np.int64)
    for b in range(batch):
        tree = ward_tree(points[b]) if trees is None else trees[b]
        tree = tree.result() if hasattr(tree, "result") else tree
        labels[b] = fcluster(tree, q, criterion="maxclust") - 1
    fallback = np.repeat(points[:, :1], q, axis=1)  # unused centres (fewer distinct points)
    centres, _ = _centroid_means(points, labels, q, fallback)
    return centres


def lloyd_1d(values: np.ndarray, q: int, max_iter: int) -> KMeansResult:
    """k-means of scalars (B, N, 1): sort once, start from the Ward partition into q
    intervals (:func:`ward_1d`), then Lloyd on the sorted values (:func:`_sorted_lloyd`).
    A cluster still empty at the end takes the point farthest from its centre, as in
    :func:`lloyd`."""
    batch, n, _ = values.shape
    order = np.argsort(values[:, :, 0], axis=1, kind="stable")
    x = np.take_along_axis(values[:, :, 0], order, axis=1)
    prefix = np.zeros((batch, n + 1))
    np.cumsum(x, axis=1, out=prefix[:, 1:])
    group, centres, counts = _sorted_lloyd(x, prefix, ward_1d(x, q, prefix), max_iter)
    points = x[:, :, None]
    gap = x - np.take_along_axis(centres, group, axis=1)
    _refill_empty(points, group, gap * gap, counts)
    centroids, _ = _centroid_means(points, group, q, centres[:, :, None])
    labels = np.empty_like(group)
    np.put_along_axis(labels, order, group, axis=1)
    diff = x - np.take_along_axis(centroids[:, :, 0], group, axis=1)
    return KMeansResult(centroids, labels, (diff * diff).sum(axis=1))


def ward_1d(x: np.ndarray, q: int, prefix: np.ndarray) -> np.ndarray:
    """Centres (B, q) of the Ward dendrograms of sorted scalars x (B, N) cut at q clusters.

    In one dimension Ward only ever merges neighbouring intervals, and it is reducible,
    so merging every pair of mutual nearest neighbours at once (the pairs whose merge
    cost is a local minimum along the row) builds the same dendrogram as scipy's
    one-merge-at-a-time linkage in about log N vectorised rounds. Each boundary between
    sorted neighbours records the cost at which it was merged away; the dendrogram is
    monotone, so the q-cluster cut keeps the q - 1 costliest boundaries. ``prefix`` holds
    the running sums of x (a zero column first)."""
    batch, n = x.shape
    cut = np.ones((batch, n - 1), dtype=bool)  # cut[:, i]: x[i], x[i+1] apart
    height = np.zeros((batch, n - 1))
    rows = np.arange(batch)
    while rows.size:
        c, h, p = cut[rows], height[rows], prefix[rows]
        row, first = np.nonzero(np.concatenate([np.ones((len(rows), 1), bool), c], axis=1))
        pair = row[1:] == row[:-1]  # clusters j, j+1 are neighbours in one row
        end = np.full_like(first, n)
        end[:-1] = np.where(pair, first[1:], n)
        size = end - first
        mean = (p[row, end] - p[row, first]) / size
        cost = np.where(pair, size[:-1] * size[1:] / (size[:-1] + size[1:])
                        * (mean[1:] - mean[:-1]) ** 2, np.inf)
        before = np.concatenate([[np.inf], cost[:-1]])
        after = np.concatenate([cost[1:], [np.inf]])
        merge = np.flatnonzero(pair & (cost < before) & (cost <= after))
        at = first[merge + 1] - 1
        c[row[merge], at] = False
        h[row[merge], at] = cost[merge]
        cut[rows], height[rows] = c, h
        rows = rows[c.any(axis=1)]
    keep = np.argsort(-height, axis=1, kind="stable")[:, :q - 1]
    starts = np.zeros((batch, n), dtype=bool)
    starts[:, 0] = True
    np.put_along_axis(starts[:, 1:], keep, True, axis=1)
    group = np.cumsum(starts, axis=1) - 1
    return _centroid_means(x[:, :, None], group, q, 0.0)[0][:, :, 0]


def _sorted_lloyd(x: np.ndarray, prefix: np.ndarray, centres: np.ndarray, max_iter: int):
    """Lloyd iterations on sorted scalars x (B, N) from ``centres`` (B, q): a cluster is
    the interval between the midpoints of neighbouring centres, found by a binary search,
    and its mean comes from the running sums ``prefix``. A problem stops when its
    intervals stop changing; an empty cluster keeps its centre. Returns the cluster of
    each x, the centres and the cluster sizes."""
    batch, n = x.shape
    q = centres.shape[1]
    centres = centres.copy()
    bounds = np.full((batch, q + 1), -1, dtype=np.int64)  # cluster k: x[bounds[k]:bounds[k+1]]
    active = np.arange(batch)
    for _ in range(max_iter):
        sorted_centres = np.sort(centres[active], axis=1)
        middle = (sorted_centres[:, 1:] + sorted_centres[:, :-1]) / 2
        new = np.empty((len(active), q + 1), dtype=np.int64)
        new[:, 0], new[:, -1] = 0, n
        for i, b in enumerate(active):  # searchsorted has no batched form
            new[i, 1:-1] = np.searchsorted(x[b], middle[i], side="left")
        counts = np.diff(new, axis=1)
        sums = np.diff(np.take_along_axis(prefix[active], new, axis=1), axis=1)
        centres[active] = np.where(counts > 0, sums / np.maximum(counts, 1), sorted_centres)
        moved = np.any(new != bounds[active], axis=1)
        bounds[active] = new
        active = active[moved]
        if active.size == 0:
            break
    counts = np.diff(bounds, axis=1)
    group = np.repeat(np.tile(np.arange(q), batch), counts.ravel()).reshape(batch, n)
    return group, centres, counts


def kmeans(points: np.ndarray, q: int, rng: np.random.Generator, init: str = "ward",
           restarts: int = 10, max_iter: int = 100, trees=None) -> KMeansResult:
    """k-means of each of B problems of shape (N, D) into q clusters (see module doc).

    ``trees``: the problems' Ward dendrograms when already built (``init="ward"``)."""
    points = np.asarray(points, dtype=np.float64)
    if init == "ward":
        if points.shape[2] == 1:
            return lloyd_1d(points, q, max_iter)
        return lloyd(points, ward_centres(points, q, trees), max_iter)
    best: KMeansResult | None = None
    for _ in range(restarts):
        run = lloyd(points, kmeans_plus_plus(points, q, rng), max_iter)
        if best is None:
            best = run
            continue
        better = run.inertia < best.inertia
        best.centroids[better] = run.centroids[better]
        best.labels[better] = run.labels[better]
        best.inertia[better] = run.inertia[better]
    return best
