"""Every user-facing setting, defined once.

Each dataclass field carries its CLI help in ``metadata``; :mod:`kse_onnx.cli` turns the
fields into ``--flags`` and the Python API takes the same names as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

from .errors import OptionError

ENTROPY_MODES = ("paper", "official")
LOWERINGS = ("dense", "compact", "factored")
KMEANS_INITS = ("ward", "k-means++")


def _opt(default, help: str, flag: str | None = None, choices=None):  # noqa: A002
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass(frozen=True)
class KSEOptions:
    """Settings of the KSE analysis of one layer (kse-spec.md sections 2-5)."""

    G: int = _opt(4, "number of levels (>= 3 to cluster; 2 = prune only)", flag="--G")
    T: int = _opt(0, "shifts the cluster counts down: q = ceil(N * 2**(g+1-T-G))", flag="--T")
    alpha: float = _opt(1.0, "entropy weight in v = sqrt(s / (1 + alpha * e))")
    entropy: str = _opt(
        "paper",
        "kernel set scored for channel c: 'paper' (its input-channel kernels) or "
        "'official' (the authors' code, reshape included)",
        choices=ENTROPY_MODES,
    )
    seed: int = _opt(0, "seed of the k-means initialisation")
    knn_k: int = _opt(5, "neighbours in the kernel density (the authors' K)")
    kmeans_init: str = _opt("ward", "k-means start: 'ward' (deterministic, default) or "
                            "'k-means++' (seeded, the authors' flavour)", choices=KMEANS_INITS)
    kmeans_restarts: int = _opt(10, "k-means++ restarts per channel; the best objective wins")
    kmeans_max_iter: int = _opt(100, "Lloyd iterations at most per restart")

    def __post_init__(self) -> None:
        _check_int(self, "G", low=1)
        _check_int(self, "T", low=0)
        _check_int(self, "seed", low=0)
        _check_int(self, "knn_k", low=1)
        _check_int(self, "kmeans_restarts", low=1)
        _check_int(self, "kmeans_max_iter", low=1)
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise OptionError("--alpha", f"must be a number >= 0, got {self.alpha!r}")
        if self.kmeans_init not in KMEANS_INITS:
            raise OptionError("--kmeans-init",
                              f"must be one of {KMEANS_INITS}, got {self.kmeans_init!r}")
        if self.entropy not in ENTROPY_MODES:
            raise OptionError("--entropy", f"must be one of {ENTROPY_MODES}, got {self.entropy!r}")


@dataclass(frozen=True)
class SelectOptions:
    """Which Conv nodes are compressed."""

    only: tuple[str, ...] = _opt((), "compress only nodes whose name matches one of these globs")
    skip: tuple[str, ...] = _opt((), "leave nodes whose name matches one of these globs")
    keep_first: bool = _opt(True, "leave the first Conv fed by a graph input alone")

    def __post_init__(self) -> None:
        for flag, globs in (("--only", self.only), ("--skip", self.skip)):
            for pattern in globs:
                _check_glob(flag, pattern)

    def wants(self, name: str) -> str | None:
        """None if the node may be compressed, else the reason it is left alone."""
        if self.only and not any(fnmatch.fnmatchcase(name, p) for p in self.only):
            return "not matched by --only"
        if any(fnmatch.fnmatchcase(name, p) for p in self.skip):
            return "matched by --skip"
        return None


@dataclass(frozen=True)
class LowerOptions:
    """How compressed Convs are written back to the graph."""

    lowering: str = _opt("dense", "graph form of a compressed Conv", choices=LOWERINGS)
    align: int = _opt(8, "round kept channel counts up to a multiple of this (1 = off)")
    prune_producers: bool = _opt(True, "remove pruned channels from the producing Conv "
                                       "where every consumer drops them")

    def __post_init__(self) -> None:
        if self.lowering not in LOWERINGS:
            raise OptionError("--lowering", f"must be one of {LOWERINGS}, got {self.lowering!r}")
        _check_int(self, "align", low=1)


def _check_int(obj, name: str, low: int) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionError(f"--{name}", f"must be an integer >= {low}, got {value!r}")


def _check_glob(flag: str, pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise OptionError(flag, f"empty or non-text glob {pattern!r}")
    if pattern.count("[") != pattern.count("]"):
        raise OptionError(flag, f"malformed glob {pattern!r} (unbalanced brackets)")


def as_dict(*options) -> dict:
    """All settings of several option objects, for reports and model metadata."""
    merged: dict = {}
    for opt in options:
        merged.update(dataclasses.asdict(opt))
    return merged
