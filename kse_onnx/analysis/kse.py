"""KSE scoring of one Conv weight (docs/algorithm.md, sections 1-4), numpy and scipy only.

A weight ``W`` of shape ``(N, C, kh, kw)`` is scored per input channel ``c`` from its
kernel set ``{W[n, c] : n < N}`` (N vectors of dimension ``D = kh*kw``).
"""

from __future__ import annotations

import math
from concurrent.futures import Executor, Future

import numpy as np
from scipy.spatial import cKDTree


def channel_kernel_sets(weight: np.ndarray) -> np.ndarray:
    """Kernel sets of the paper: ``sets[c, n] = W[n, c].ravel()``, shape (C, N, D), float64."""
    n, c = weight.shape[:2]
    return np.ascontiguousarray(weight.reshape(n, c, -1).transpose(1, 0, 2), dtype=np.float64)


def official_kernel_sets(weight: np.ndarray) -> np.ndarray:
    """Kernel sets the authors' code scores for entropy (docs/algorithm.md, section 10).

    Their code builds the (C, N, D) channel-major array, then *reshapes* it to (N, C, D)
    and transposes back, so for N != C "channel c" reads a mix of rows; for N == C it is
    output filter c. Reproduced here exactly for the compatibility mode.
    """
    n, c = weight.shape[:2]
    channel_major = channel_kernel_sets(weight)  # (C, N, D)
    return np.ascontiguousarray(channel_major.reshape(n, c, -1).transpose(1, 0, 2))


def kernel_sparsity(weight: np.ndarray) -> np.ndarray:
    """``s_c = sum_n ||W[n, c]||_1``, shape (C,), as float64.

    Summed in the weight's precision (at least float32) in the authors' order, per-kernel
    L1 norms first, then over filters, so the scores match theirs bit for bit; float64
    accumulation would move ``s`` by ~1e-5 and the normalised indicator by ~3e-6.
    """
    n, c = weight.shape[:2]
    dtype = np.promote_types(weight.dtype, np.float32)
    per_kernel = np.abs(weight.astype(dtype).reshape(n, c, -1).transpose(1, 0, 2)).sum(axis=2)
    return per_kernel.sum(axis=1).astype(np.float64)


def kernel_density(kernels: np.ndarray, k: int) -> np.ndarray:
    """``dm_i`` = sum of the Euclidean distances from kernel i to its k nearest others.

    ``kernels`` is (N, D) with N > k. A kd-tree query of k+1 points per kernel returns
    the kernel itself (or an exact duplicate) first at distance 0, so summing all k+1
    distances equals summing the k nearest others, whichever of the two came first.
    """
    if kernels.shape[1] == 1:
        return scalar_density(kernels[None, :, 0], k)[0]
    distances, _ = cKDTree(kernels).query(kernels, k=k + 1)
    return distances.sum(axis=1)


def scalar_density(values: np.ndarray, k: int) -> np.ndarray:
    """:func:`kernel_density` of 1x1 kernels, many sets at once: values (B, N) -> (B, N).

    On a line the k nearest others of a point are among the k before and the k after it
    in sorted order, so no tree is needed: the distances to those 2k (and to itself, 0)
    are sorted and the k+1 smallest summed in increasing order, as the kd-tree's are.
    Same bits as the tree: it computes ``sqrt(d * d)``, which is ``|d|`` exactly in
    binary floating point (no overflow: the values are finite weights).
    """
    batch, n = values.shape
    step = max(1, 2_000_000 // (n * (2 * k + 1)))  # bounded working set
    if batch > step:
        return np.concatenate([scalar_density(values[i:i + step], k)
                               for i in range(0, batch, step)])
    ordered = np.sort(values, axis=1)
    rank = np.argsort(values, axis=1, kind="stable")
    reach = min(k, n - 1)
    padded = np.pad(ordered, ((0, 0), (reach, reach)), constant_values=np.inf)
    window = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1, axis=1)
    distances = np.sort(np.abs(window - ordered[:, :, None]), axis=2)[:, :, :k + 1]
    sums = distances.sum(axis=2)
    density = np.empty_like(sums)
    np.put_along_axis(density, rank, sums, axis=1)
    return density


def density_entropy(density: np.ndarray) -> float:
    """``e = -sum_i p_i log2 p_i`` with ``p_i = dm_i / sum_j dm_j``.

    Defined cases: all densities zero (every kernel coincides with k others) gives 0,
    the entropy of a single pattern; ``p_i = 0`` terms contribute 0 (``0 log 0 = 0``).
    """
    total = density.sum()
    if total <= 0:
        return 0.0
    p = density[density > 0] / total
    return float(-(p * np.log2(p)).sum())


def kernel_entropy(kernel_sets: np.ndarray, k: int, densities=None) -> np.ndarray:
    """Entropy of each channel's kernel set, shape (C,). Needs N > k (checked by caller).

    ``densities`` may hold the channels' densities already computed (or futures of
    them, see :func:`submit_densities`).
    """
    if densities is None:
        densities = [kernel_density(s, k) for s in kernel_sets]
    return np.array([density_entropy(d.result() if isinstance(d, Future) else d)
                     for d in densities])


def submit_densities(pool: Executor, kernel_sets: np.ndarray, k: int) -> list:
    """Queue each channel's density on ``pool``: scipy's kd-tree releases the GIL, so
    channels run on a thread per core (1.85x on 2 cores) with the same result. 1x1
    kernels need no tree: all channels at once (:func:`scalar_density`)."""
    if kernel_sets.shape[2] == 1:
        return list(scalar_density(kernel_sets[:, :, 0], k))
    return [pool.submit(kernel_density, s, k) for s in kernel_sets]


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1]. A constant vector (all channels tie) maps to ones:
    the term then ranks no channel above another instead of dividing by zero."""
    low, high = values.min(), values.max()
    if high <= low:
        return np.ones_like(values, dtype=np.float64)
    return (values - low) / (high - low)


def kse_indicator(sparsity: np.ndarray, entropy: np.ndarray, alpha: float) -> np.ndarray:
    """``v = minmax(sqrt(minmax(s) / (1 + alpha * minmax(e))))``."""
    v = np.sqrt(minmax(sparsity) / (1.0 + alpha * minmax(entropy)))
    return minmax(v)


def levels_and_counts(indicator: np.ndarray, n_filters: int, G: int, T: int):
    """Level per channel and kernels kept per channel ``q`` (docs/algorithm.md, section 4).

    level 0 (``floor(vG) == 0``): pruned, q = 0; level G-1 (``ceil(vG) == G``): whole,
    q = N; otherwise level ``g = floor(vG)`` and ``q = ceil(N * 2**(g+1-T-G))``.
    """
    levels = np.empty(indicator.shape, dtype=np.int64)
    counts = np.empty(indicator.shape, dtype=np.int64)
    for c, v in enumerate(indicator):
        if math.floor(v * G) == 0:
            levels[c], counts[c] = 0, 0
        elif math.ceil(v * G) == G:
            levels[c], counts[c] = G - 1, n_filters
        else:
            g = math.floor(v * G)
            # v*G == G-1 exactly lands on the top level too; the authors' code keeps it whole
            q = n_filters if g == G - 1 else math.ceil(n_filters * 2.0 ** (g + 1 - T - G))
            levels[c], counts[c] = g, q
    return levels, counts
