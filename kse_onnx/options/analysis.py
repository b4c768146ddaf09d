"""Options of the analysis and of the rewrite: KSE per layer, which Convs, how they are
written back, and the targets that choose G and T or the kept channels.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from ..errors import OptionError
from .fields import (
    BUDGET_IMPORTANCES,
    ENTROPY_MODES,
    KMEANS_INITS,
    LOWERINGS,
    MAX_GLOBS,
    MAX_LEVELS,
    PROVIDER_NAMES,
    batch_list,
    check_choice,
    check_glob,
    check_int,
    option,
)


@dataclass(frozen=True)
class KSEOptions:
    """Settings of the KSE analysis of one layer (docs/algorithm.md, sections 2-5)."""

    G: int = option(4, "number of levels (>= 3 to cluster; 2 = prune only)", flag="--G")
    T: int = option(0, "shifts the cluster counts down: q = ceil(N * 2**(g+1-T-G))", flag="--T")
    alpha: float = option(1.0, "entropy weight in v = sqrt(s / (1 + alpha * e))")
    entropy: str = option(
          "paper",
          "kernel set scored for channel c: 'paper' (its input-channel kernels) or 'official' "
          "(the authors' code, reshape included)",
          choices=ENTROPY_MODES,
      )
    seed: int = option(0, "seed of the k-means initialisation")
    knn_k: int = option(5, "neighbours in the kernel density (the authors' K)")
    kmeans_init: str = option("ward", "k-means start: 'ward' (deterministic, default) or "
                                      "'k-means++' (seeded, the authors' "
                                      "flavour)", choices=KMEANS_INITS)
    kmeans_restarts: int = option(10, "k-means++ restarts per channel; the best objective wins")
    kmeans_max_iter: int = option(100, "Lloyd iterations at most per restart")

    def __post_init__(self) -> None:
        # upper bounds: these settings are also read back from a model's metadata by
        # ``verify``, an untrusted source whose work must stay bounded
        check_int(self, "G", low=1, high=MAX_LEVELS)
        check_int(self, "T", low=0, high=MAX_LEVELS)
        check_int(self, "seed", low=0, high=2**32 - 1)
        check_int(self, "knn_k", low=1, high=1024)
        check_int(self, "kmeans_restarts", low=1, high=100)
        check_int(self, "kmeans_max_iter", low=1, high=10_000)
        if not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
                and math.isfinite(self.alpha) and self.alpha >= 0):
            raise OptionError("--alpha", f"must be a finite number >= 0, got {self.alpha!r}")
        check_choice("--kmeans-init", self.kmeans_init, KMEANS_INITS)
        check_choice("--entropy", self.entropy, ENTROPY_MODES)


def layer_setting(entry) -> tuple[str, tuple[int, int]]:
    """``"GLOB=G,T"`` -> (GLOB, (G, T)) with G in [1, MAX_LEVELS] and T in [0, MAX_LEVELS]
    (the ranges of --G and --T); an OptionError naming --layer-gt otherwise."""
    pattern, _, levels = str(entry).rpartition("=") if isinstance(entry, str) else ("", "", "")
    check_glob("--layer-gt", pattern)
    try:
        g, t = (int(v) for v in levels.split(","))
    except ValueError:
        raise OptionError("--layer-gt", f"expected GLOB=G,T such as 'layer3*=3,0', got "
                                        f"{str(entry)[:60]!r}") from None
    if not (1 <= g <= MAX_LEVELS and 0 <= t <= MAX_LEVELS):
        raise OptionError("--layer-gt", f"G must be in [1, {MAX_LEVELS}] and T in "
                                        f"[0, {MAX_LEVELS}], got {str(entry)[:60]!r}")
    return pattern, (g, t)


@dataclass(frozen=True)
class SelectOptions:
    """Which Conv nodes are compressed."""

    only: tuple[str, ...] = option((), "compress only nodes whose name matches one of these "
                                       "globs (repeat the flag)", metavar="GLOB")
    skip: tuple[str, ...] = option((), "leave nodes whose name matches one of these globs "
                                       "(repeat the flag)", metavar="GLOB")
    keep_first: bool = option(True, "leave the first Conv fed by a graph input alone")
    layer_gt: tuple[str, ...] = option((), "give the Convs whose name matches GLOB their own "
                                           "G and T (repeat the flag; the first match wins; "
                                           "--max-drop records its per-layer choices here)",
                                       metavar="GLOB=G,T")

    def __post_init__(self) -> None:
        for flag, globs in (("--only", self.only), ("--skip", self.skip)):
            if not isinstance(globs, tuple) or len(globs) > MAX_GLOBS:
                raise OptionError(flag, f"expected at most {MAX_GLOBS} globs")
            for pattern in globs:
                check_glob(flag, pattern)
        if not isinstance(self.layer_gt, tuple) or len(self.layer_gt) > MAX_GLOBS:
            raise OptionError("--layer-gt", f"expected at most {MAX_GLOBS} settings")
        for entry in self.layer_gt:
            layer_setting(entry)

    def layer_levels(self, name: str) -> tuple[int, int] | None:
        """(G, T) of the first ``--layer-gt`` whose glob matches ``name``; None: the
        model's G and T."""
        for entry in self.layer_gt:
            pattern, levels = layer_setting(entry)
            if fnmatch.fnmatchcase(name, pattern):
                return levels
        return None

    def skip_reason(self, name: str) -> str | None:
        """None if the node may be compressed, else the reason it is left alone."""
        if self.only and not any(fnmatch.fnmatchcase(name, p) for p in self.only):
            return "not matched by --only"
        if any(fnmatch.fnmatchcase(name, p) for p in self.skip):
            return "matched by --skip"
        return None


@dataclass(frozen=True)
class LowerOptions:
    """How compressed Convs are written back to the graph."""

    lowering: str = option("auto", "graph form of a compressed Conv: 'auto' times the forms of "
                                   "each layer and keeps the fastest, then checks the whole "
                                   "model is no slower than the original", choices=LOWERINGS)
    align: int = option(8, "dense/compact/factored: round kept channel counts up to a multiple "
                           "of this (1 = off)")
    prune_producers: bool = option(True, "remove pruned channels from the producing Conv where "
                                         "every consumer drops them")
    batches: str = option("1,8", "auto: comma-separated batch sizes to time at; a form must be "
                                 "no slower at every one", metavar="B[,B...]")
    provider: str = option("cpu", "auto: onnxruntime provider to time on", choices=PROVIDER_NAMES)
    threads: str = option("1", "auto: comma-separated intra-op thread counts to time with; a "
                               "form must be no slower with every one", metavar="T[,T...]")
    tolerance: float = option(0.02, "auto: latency ratio above 1 still counted as no slower "
                                    "(the optimized model must time <= 1 + this x the original)")
    choices: str = option("", "auto: take each layer's form from this earlier output model or "
                              "JSON report instead of timing (reproducible output)",
                          metavar="MODEL_OR_REPORT")

    def __post_init__(self) -> None:
        check_choice("--lowering", self.lowering, LOWERINGS)
        check_int(self, "align", low=1)
        check_choice("--provider", self.provider, PROVIDER_NAMES)
        batch_list(self.batches)
        batch_list(self.threads, "--threads")
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise OptionError("--tolerance", f"must be a number in [0, 1), got {self.tolerance!r}")

    @property
    def timing_points(self) -> list[tuple[int, int]]:
        """(batch, threads) pairs ``auto`` times at."""
        return [(b, t) for t in batch_list(self.threads, "--threads")
                for b in batch_list(self.batches)]


@dataclass(frozen=True)
class TargetOptions:
    """Target-driven settings: choose G and T to reach a target (overrides --G/--T)."""

    target_macs: float = option(0.0, "choose G,T so the conv multiply-adds (the paper's count: "
                                     "each kept channel's shared kernels) are at most this "
                                     "fraction of the original (0 = off)", metavar="R")
    target_size: float = option(0.0, "choose G,T so the file stored in the compact form is at "
                                     "most this fraction of the original (0 = off)",
                                metavar="R")

    def __post_init__(self) -> None:
        for name in ("target_macs", "target_size"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                raise OptionError(f"--{name.replace('_', '-')}",
                                  f"must be a fraction in (0, 1], or 0 for off; got {value!r}")

    @property
    def active(self) -> bool:
        return bool(self.target_macs or self.target_size)


@dataclass(frozen=True)
class BudgetOptions:
    """A measured latency budget (docs/budget.md): kept input channel counts per layer,
    chosen by the KSE indicator, so that the whole model times at most R x the original
    (with --quantize, R x onnxruntime's INT8 of the original) at every --batches/--threads
    point; replayed without timing by --choices."""

    target_latency: float = option(0.0, "prune to a measured latency of at most this fraction "
                                        "of the original's at every timing point (0 = off)",
                                   metavar="R")
    budget_step: int = option(4, "target-latency: kept channel counts are multiples of this "
                                 "(the SIMD block of the convolutions); of lcm(this, 8) when "
                                 "its smallest model is over a tenth faster (float)")
    budget_rounds: int = option(4, "target-latency: whole-model measurements at most; each one "
                                   "tightens the predicted target")
    budget_importance: str = option(
          "indicator",
          "target-latency: what a channel group costs: 'indicator' (the KSE indicator mass) "
          "or 'sensitivity' (also the output error on the calibration images with the group "
          "cut by one step, one forward pass per group; needs --calibration)",
          choices=BUDGET_IMPORTANCES,
      )
    budget_blocks: bool = option(
        False, "target-latency: first remove whole residual blocks (y = x + F(x) with a "
               "branch F of Convs reading only x), least output error per multiply-add "
               "first, until the measured latency meets R; channels are cut only when "
               "removing every such block is not enough. Needs --calibration")

    def __post_init__(self) -> None:
        value = self.target_latency
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise OptionError("--target-latency",
                              f"must be a fraction in (0, 1), or 0 for off; got {value!r}")
        check_int(self, "budget_step", low=1, high=1024)
        check_int(self, "budget_rounds", low=1, high=50)
        check_choice("--budget-importance", self.budget_importance, BUDGET_IMPORTANCES)
        if not isinstance(self.budget_blocks, bool):
            raise OptionError("--budget-blocks", f"must be true or false, got "
                                                 f"{self.budget_blocks!r}")

    @property
    def active(self) -> bool:
        return bool(self.target_latency)
