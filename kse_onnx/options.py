"""Every user-facing setting, defined once.

Each dataclass field carries its CLI help in ``metadata``; :mod:`kse_onnx.cli` turns the
fields into ``--flags`` and the Python API takes the same names as keyword arguments.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass, field

from .errors import OptionError

ENTROPY_MODES = ("paper", "official")
LOWERINGS = ("auto", "dense", "compact", "factored")
# provider names of the CLI -> onnxruntime's execution providers
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
PROVIDER_NAMES = tuple(PROVIDERS)
KMEANS_INITS = ("ward", "k-means++")
MAX_LEVELS = 32  # G and T: 2**(g+1-T-G) stays a normal float
MAX_GLOB = 256  # characters of an --only/--skip glob
MAX_GLOBS = 256  # globs per --only/--skip


def _opt(default, help: str, flag: str | None = None, choices=None,  # noqa: A002
         metavar: str | None = None, required: bool = False):
    """A field with its CLI metadata: help, flag (default ``--field-name``), choices,
    metavar (default: the choices, or the field name in capitals) and whether the flag
    must be given."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                            "metavar": metavar, "required": required})


@dataclass(frozen=True)
class KSEOptions:
    """Settings of the KSE analysis of one layer (docs/algorithm.md, sections 2-5)."""

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
        # upper bounds: these settings are also read back from a model's metadata by
        # ``verify``, an untrusted source whose work must stay bounded
        _check_int(self, "G", low=1, high=MAX_LEVELS)
        _check_int(self, "T", low=0, high=MAX_LEVELS)
        _check_int(self, "seed", low=0, high=2**32 - 1)
        _check_int(self, "knn_k", low=1, high=1024)
        _check_int(self, "kmeans_restarts", low=1, high=100)
        _check_int(self, "kmeans_max_iter", low=1, high=10_000)
        if not (isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool)
                and math.isfinite(self.alpha) and self.alpha >= 0):
            raise OptionError("--alpha", f"must be a finite number >= 0, got {self.alpha!r}")
        _check_choice("--kmeans-init", self.kmeans_init, KMEANS_INITS)
        _check_choice("--entropy", self.entropy, ENTROPY_MODES)


@dataclass(frozen=True)
class SelectOptions:
    """Which Conv nodes are compressed."""

    only: tuple[str, ...] = _opt((), "compress only nodes whose name matches one of these globs "
                                      "(repeat the flag)", metavar="GLOB")
    skip: tuple[str, ...] = _opt((), "leave nodes whose name matches one of these globs "
                                      "(repeat the flag)", metavar="GLOB")
    keep_first: bool = _opt(True, "leave the first Conv fed by a graph input alone")

    def __post_init__(self) -> None:
        for flag, globs in (("--only", self.only), ("--skip", self.skip)):
            if not isinstance(globs, tuple) or len(globs) > MAX_GLOBS:
                raise OptionError(flag, f"expected at most {MAX_GLOBS} globs")
            for pattern in globs:
                _check_glob(flag, pattern)

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

    lowering: str = _opt("auto", "graph form of a compressed Conv: 'auto' times the forms of "
                                 "each layer and keeps the fastest, then checks the whole model "
                                 "is no slower than the original", choices=LOWERINGS)
    align: int = _opt(8, "dense/compact/factored: round kept channel counts up to a multiple "
                         "of this (1 = off)")
    prune_producers: bool = _opt(True, "remove pruned channels from the producing Conv "
                                       "where every consumer drops them")
    batches: str = _opt("1,8", "auto: comma-separated batch sizes to time at; a form must "
                               "be no slower at every one", metavar="B[,B...]")
    provider: str = _opt("cpu", "auto: onnxruntime provider to time on", choices=PROVIDER_NAMES)
    threads: str = _opt("1", "auto: comma-separated intra-op thread counts to time with; a "
                             "form must be no slower with every one", metavar="T[,T...]")
    tolerance: float = _opt(0.02, "auto: latency ratio above 1 still counted as no slower "
                                  "(the optimized model must time <= 1 + this x the original)")
    choices: str = _opt("", "auto: take each layer's form from this earlier output model or "
                            "JSON report instead of timing (reproducible output)",
                        metavar="MODEL_OR_REPORT")

    def __post_init__(self) -> None:
        _check_choice("--lowering", self.lowering, LOWERINGS)
        _check_int(self, "align", low=1)
        _check_choice("--provider", self.provider, PROVIDER_NAMES)
        batch_list(self.batches)
        batch_list(self.threads, "--threads")
        if not (isinstance(self.tolerance, (int, float)) and 0 <= self.tolerance < 1):
            raise OptionError("--tolerance", f"must be a number in [0, 1), got {self.tolerance!r}")

    @property
    def timing_points(self) -> list[tuple[int, int]]:
        """(batch, threads) pairs ``auto`` times at."""
        return [(b, t) for t in batch_list(self.threads, "--threads")
                for b in batch_list(self.batches)]


def batch_list(text: str, flag: str = "--batches") -> list[int]:
    """``"1,64"`` -> ``[1, 64]``; an OptionError naming ``flag`` otherwise."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError as exc:
        raise OptionError(flag, f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise OptionError(flag, f"values must be >= 1, got {text!r}")
    return values


@dataclass(frozen=True)
class TargetOptions:
    """Target-driven settings: choose G and T to reach a target (overrides --G/--T)."""

    target_macs: float = _opt(0.0, "choose G,T so the conv multiply-adds (the paper's count: "
                                    "each kept channel's shared kernels) are at most this "
                                    "fraction of the original (0 = off)", metavar="R")
    target_size: float = _opt(0.0, "choose G,T so the file stored in the compact form is at "
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

    target_latency: float = _opt(0.0, "prune to a measured latency of at most this fraction of "
                                      "the original's at every timing point (0 = off)",
                                 metavar="R")
    budget_step: int = _opt(4, "target-latency: kept channel counts are multiples of this "
                               "(the SIMD block of the convolutions)")
    budget_rounds: int = _opt(4, "target-latency: whole-model measurements at most; each "
                                 "one tightens the predicted target")

    def __post_init__(self) -> None:
        value = self.target_latency
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise OptionError("--target-latency",
                              f"must be a fraction in (0, 1), or 0 for off; got {value!r}")
        _check_int(self, "budget_step", low=1, high=1024)
        _check_int(self, "budget_rounds", low=1, high=50)

    @property
    def active(self) -> bool:
        return bool(self.target_latency)


def _check_int(obj, name: str, low: int, high: int | None = None) -> None:
    value = getattr(obj, name)
    flag = "--" + name.replace("_", "-")
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionError(flag, f"must be an integer >= {low}, got {shown}")
    if high is not None and value > high:
        raise OptionError(flag, f"must be an integer <= {high}, got {shown}")


def _check_glob(flag: str, pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise OptionError(flag, f"empty or non-text glob {pattern!r}")
    if len(pattern) > MAX_GLOB:
        raise OptionError(flag, f"glob longer than {MAX_GLOB} characters")
    if pattern.count("[") != pattern.count("]"):
        raise OptionError(flag, f"malformed glob {pattern!r} (unbalanced brackets)")


def options_from(cls, settings: dict, where, **overrides):
    """``cls`` built from the settings recorded in a model's metadata (untrusted: every
    value is validated by ``cls``); an OptionError naming ``where`` when one is missing."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif f.name in settings:
            value = settings[f.name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
        else:
            raise OptionError(str(where), f"its recorded settings lack {f.name!r}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise OptionError(str(where), f"recorded settings are malformed ({exc})") from None


def as_dict(*options) -> dict:
    """All settings of several option objects, for reports and model metadata."""
    merged: dict = {}
    for opt in options:
        merged.update(dataclasses.asdict(opt))
    return merged


QUANTIZE_MODES = ("none", "int8-dynamic", "int8-static")
REFIT_MODES = ("none", "ls", "act", "block", "distill")


@dataclass(frozen=True)
class CalibrationOptions:
    """Unlabeled calibration images, for the post-training refit and int8-static."""

    calibration: str = _opt("", "calibration inputs: .npz (array x), IDX images or an image "
                                "folder, read like finetune --data with the data options; "
                                "labels are ignored. Turns on the refit (optimize) and "
                                "calibrates int8-static")
    calibration_images: int = _opt(1024, "how many calibration inputs (the first)")

    def __post_init__(self) -> None:
        _check_int(self, "calibration_images", low=1)


@dataclass(frozen=True)
class RefitOptions:
    """Post-training refit of the shared kernels from calibration images (docs/refit.md)."""

    refit: str = _opt("act", "with --calibration: 'ls' least-squares fit of each compressed "
                             "Conv's shared kernels and bias to the original's output "
                             "(residual-aware); 'act' then matches the output after the "
                             "ReLU that follows, by more least-squares rounds; 'block' "
                             "(after 'ls') fits each residual block's Convs jointly to the "
                             "block output with Adam; 'distill' (after 'act') trains every "
                             "weight of the compressed model toward the original's outputs "
                             "on the calibration images (sharing and pruned channels kept); "
                             "'none' skips the refit",
                      choices=REFIT_MODES)
    refit_rounds: int = _opt(6, "act: least-squares rounds matching the output after the ReLU")
    refit_steps: int = _opt(200, "block: Adam steps per block")
    refit_lr: float = _opt(1e-3, "block: Adam learning rate (relative to the weight scale)")
    refit_batch: int = _opt(64, "block: calibration images per Adam step")
    refit_classifier: bool = _opt(True, "least-squares refit of the final classifier "
                                        "(Gemm) to the original's logits")
    refit_damping: float = _opt(1e-6, "least squares: ridge damping, relative to the mean "
                                      "diagonal of the normal equations")
    refit_positions: int = _opt(131_072, "least squares: output positions (images x height "
                                         "x width) summed per layer, drawn at random when "
                                         "there are more; 0 = all")
    refit_seed: int = _opt(0, "seed of the sampled positions, of the held-out split, and of "
                              "the block and distill modes' minibatches and augmentation")
    refit_holdout: float = _opt(0.2, "share of the calibration images held out: every fitted "
                                     "step (least squares, after-ReLU rounds, blocks, the "
                                     "classifier, distillation) is kept only where it lowers "
                                     "the error on them; 0 = judge on the fitted images")
    refit_distill_epochs: int = _opt(32, "distill: passes over the fitted calibration images")
    refit_distill_lr: float = _opt(1e-2, "distill: Adam learning rate relative to each "
                                         "tensor's RMS (one-epoch warm-up, cosine decay)")
    refit_distill_batch: int = _opt(32, "distill: calibration images per Adam step")
    refit_distill_mixup: bool = _opt(True, "distill: blend each augmented image with another "
                                           "of its batch (weight uniform in [0, 1]); the "
                                           "teacher sees the same blend")

    def __post_init__(self) -> None:
        if self.refit not in REFIT_MODES:
            raise OptionError("--refit", f"must be one of {REFIT_MODES}, got {self.refit!r}")
        _check_int(self, "refit_distill_batch", low=1)
        for name in ("refit_rounds", "refit_steps", "refit_batch", "refit_seed",
                     "refit_positions"):
            _check_int(self, name, low=0 if name != "refit_batch" else 1)
        _check_int(self, "refit_distill_epochs", low=0)
        if not (isinstance(self.refit_holdout, (int, float)) and 0 <= self.refit_holdout < 1):
            raise OptionError("--refit-holdout", f"must be a number in [0, 1), got "
                                                 f"{self.refit_holdout!r}")
        for name in ("refit_lr", "refit_damping", "refit_distill_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise OptionError(f"--{name.replace('_', '-')}",
                                  f"must be a finite number > 0, got {value!r}")

    @property
    def active(self) -> bool:
        return self.refit != "none"



@dataclass(frozen=True)
class QuantizeOptions:
    """INT8 after KSE, with onnxruntime's quantizer; the KSE sharing stays in the file."""

    quantize: str = _opt("none", "quantize the output: int8-static (QDQ, calibrated; integer "
                                 "convs) or int8-dynamic (int8 weights, activations quantized "
                                 "at run time)", choices=QUANTIZE_MODES)
    float_output: bool = _opt(False, "optimize: write the float model, its layer forms chosen "
                                     "by timing the INT8 builds (to fine-tune, then "
                                     "finetune --quantize)")
    float_input_conv: bool = _opt(True, "int8-static: keep the Convs that read the model "
                                        "input in float (an image's first conv loses the "
                                        "most accuracy in INT8 and costs the least time)")
    short_names: bool = _opt(True, "int8 output: rename internal tensors t0, t1, ... (graph "
                                   "inputs/outputs and Conv node names kept): the quantizer's "
                                   "long names are a fifth of a small model's file")

    def __post_init__(self) -> None:
        _check_choice("--quantize", self.quantize, QUANTIZE_MODES)

    @property
    def active(self) -> bool:
        return self.quantize != "none"


SCHEDULES = ("cosine", "step", "constant")
LOSSES = ("auto", "kd", "mse", "features")
OPTIMIZERS = ("auto", "sgd", "adam")
# --lr 0: the chosen optimizer's. Adam's from tools/finetune_dense.py (docs/results.md)
DEFAULT_LR = {"sgd": 0.01, "adam": 0.003}
DEFAULT_BATCH = {"kd": 128, "mse": 32, "features": 32}  # --batch 0: the loss's


@dataclass(frozen=True)
class DataOptions:
    """Training and evaluation data: preprocessing and augmentation."""

    resize: int = _opt(0, "resize the shorter side to this many pixels (0 = off)")
    crop: int = _opt(0, "centre-crop to this size (0 = off)")
    mean: tuple[str, ...] = _opt((), "per-channel mean to subtract (repeat per channel)",
                                 metavar="MEAN")
    std: tuple[str, ...] = _opt((), "per-channel std to divide by (repeat per channel)",
                                metavar="STD")
    pad_crop: int = _opt(0, "augmentation: random crop after zero padding by this much")
    flip: bool = _opt(False, "augmentation: random horizontal flip")

    def __post_init__(self) -> None:
        for name in ("resize", "crop", "pad_crop"):
            _check_int(self, name, low=0)
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            try:
                numbers = [float(v) for v in values]
            except ValueError as exc:
                raise OptionError(flag, f"expected numbers, got {values!r}") from exc
            if flag == "--std" and any(v <= 0 for v in numbers):
                raise OptionError(flag, "values must be > 0")


@dataclass(frozen=True)
class FinetuneOptions:
    """Fine-tuning by distillation from the original model (docs/algorithm.md, section 8)."""

    epochs: int = _opt(1, "passes over the training data")
    batch: int = _opt(0, "global batch size (split across torchrun processes); 0 = 128 "
                         "for --loss kd, 32 for mse and features (a dense target gives "
                         "each image many targets: smaller batches, more steps)")
    lr: float = _opt(0.0, "learning rate; 0 = the optimizer's default: 0.01 for SGD (the "
                          "authors' CIFAR setting), 0.003 for Adam (measured on dense "
                          "losses)")
    lr_check: int = _opt(2, "steps of the one-batch learning-rate check before training: "
                            "if that many steps at the peak rate raise the loss of the first "
                            "batch, the rate is divided by 3 (up to 4 times; 0 = off)")
    warmup: float = _opt(0.1, "fraction of all steps over which the learning rate rises "
                              "linearly from 0 (0 = off), so the first steps do not throw a "
                              "good start away")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(1e-5, "weight decay (the authors' setting)")
    optimizer: str = _opt("auto", "'sgd' (with --momentum) or 'adam'; 'auto' = SGD for "
                                  "--loss kd, Adam for mse and features (dense targets, "
                                  "whose gradients differ in scale from layer to layer)",
                          choices=OPTIMIZERS)
    schedule: str = _opt("cosine", "learning-rate schedule", choices=SCHEDULES)
    clip_grad: float = _opt(5.0, "clip the gradient norm to this (0 = off): exported models "
                                 "have BatchNorm folded into the convs and diverge without it")
    temperature: float = _opt(4.0, "distillation temperature")
    label_weight: float = _opt(0.5, "weight of cross-entropy on labels (when labels exist); "
                                    "the rest is distillation")
    val_fraction: float = _opt(0.1, "held-out fraction of the images: the student is measured "
                                    "on it at the start and after every epoch (accuracy, or "
                                    "agreement with the teacher, for logits; the loss's "
                                    "normalised error otherwise) and the best is written, the "
                                    "input unchanged if no epoch beats it (0 = off)")
    seed: int = _opt(0, "seed of shuffling and augmentation")
    threads: int = _opt(0, "torch threads per process (0 = torch's default)")
    qat_epochs: int = _opt(1, "with --quantize int8-static: quantization-aware epochs (fake "
                              "int8 shared kernels) when the INT8 model loses more than "
                              "0.3 point on the held-out split (0 = never)")
    qat_lr: float = _opt(0.001, "learning rate of the quantization-aware epochs (constant)")
    loss: str = _opt("auto", "what the student matches: 'kd' (softened classifier logits), "
                             "'mse' (every output, each divided by the teacher's variance), "
                             "'features' (the compressed Convs' outputs, likewise, averaged "
                             "with the mse term; any model type, no labels); 'auto' = kd "
                             "for one 2-D logits output, else mse", choices=LOSSES)
    quiet: bool = _opt(False, "no progress bar and no per-epoch lines on stderr")

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch", 0), ("seed", 0), ("threads", 0),
                          ("qat_epochs", 0), ("lr_check", 0)):
            _check_int(self, name, low=low)
        checks = (("lr", 0 <= self.lr < math.inf), ("qat_lr", 0 < self.qat_lr < math.inf),
                  ("momentum", 0 <= self.momentum < 1),
                  ("weight_decay", 0 <= self.weight_decay < math.inf),
                  ("clip_grad", 0 <= self.clip_grad < math.inf),
                  ("temperature", 0 < self.temperature < math.inf),
                  ("label_weight", 0 <= self.label_weight <= 1),
                  ("val_fraction", 0 <= self.val_fraction < 1),
                  ("warmup", 0 <= self.warmup <= 1))
        for name, ok in checks:
            if not ok:
                raise OptionError(f"--{name.replace('_', '-')}",
                                  f"out of range: {getattr(self, name)!r}")
        _check_choice("--schedule", self.schedule, SCHEDULES)
        _check_choice("--loss", self.loss, LOSSES)
        _check_choice("--optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class VerifyOptions:
    """Checks of an optimized model against its original."""

    inputs: str = _opt("", "real inputs (.npz, one array per graph input), checked besides "
                           "the random ones", metavar="NPZ")
    batch: int = _opt(2, "batch of the random inputs")
    seed: int = _opt(0, "seed of the random inputs")
    rtol: float = _opt(0.0, "relative error allowed for rewrite exactness; 0 = from the "
                            "weights' dtype: 1e-4 float32/float64, 1e-2 float16, 5e-2 "
                            "bfloat16. Non-finite outputs always fail")
    max_drop: float = _opt(0.0, "CI gate: exit 1 when the drop against the original on "
                                "--inputs (then read as images: .npz x with optional y, IDX "
                                "or an image folder) exceeds D points: accuracy lost with "
                                "labels, else 100 x (1 - top-1 agreement), or 100 x the "
                                "relative error for outputs that are not logits (0 = off)",
                           metavar="D")

    def __post_init__(self) -> None:
        _check_int(self, "batch", low=1)
        _check_int(self, "seed", low=0)
        if not (isinstance(self.rtol, (int, float)) and 0 <= self.rtol < math.inf):
            raise OptionError("--rtol", f"must be a number >= 0, got {self.rtol!r}")
        if isinstance(self.max_drop, bool) or not (isinstance(self.max_drop, (int, float))
                                                   and 0 <= self.max_drop <= 100):
            raise OptionError("--max-drop", f"must be a number in [0, 100] (0 = off), got "
                              f"{self.max_drop!r}")
        if self.max_drop and not self.inputs:
            raise OptionError("--max-drop", "needs --inputs DATA (images to measure on)")


@dataclass(frozen=True)
class BenchOptions:
    """Latency of models side by side."""

    provider: str = _opt("cpu", "onnxruntime provider to time on",
                         metavar="{" + ",".join(PROVIDER_NAMES) + "}")  # checked below
    batch: str = _opt("1", "comma-separated batch sizes", metavar="B[,B...]")
    threads: int = _opt(1, "intra-op threads")
    repeats: int = _opt(30, "timed runs per model")

    def __post_init__(self) -> None:
        _check_choice("--provider", self.provider, PROVIDER_NAMES)
        batch_list(self.batch, "--batch")
        _check_int(self, "threads", low=1)
        _check_int(self, "repeats", low=1)


def check_combined(lower=None, target=None, budget=None, quantize=None,
                   calibration=None) -> None:
    """Checks across option groups of ``optimize`` (each group checks itself when built),
    made before any file is read: an OptionError naming the flag."""
    if budget is not None and budget.active:
        if lower is not None and lower.lowering == "factored":
            raise OptionError("--lowering", "factored cannot be used with --target-latency "
                                            "(the budget writes each layer dense over its "
                                            "kept channels)")
        if target is not None and target.active:
            raise OptionError("--target-latency", "cannot be combined with --target-macs or "
                                                  "--target-size")
    if (quantize is not None and quantize.quantize == "int8-static"
            and not (calibration is not None and calibration.calibration)):
        raise OptionError("--calibration", "int8-static needs calibration inputs")


def _check_choice(flag: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptionError(flag, f"must be one of {choices}, got {value!r}")


# The files each command reads or writes besides its positional models.
_TEACHER = "the original .onnx model"
_DATA = ".npz (x, optional y), IDX images file or an image folder"


@dataclass(frozen=True)
class ProgressOptions:
    """Progress on stderr (score, optimize, refit): a bar on a terminal, a line per tenth
    of the work in logs."""

    quiet: bool = _opt(False, "no progress bars and no progress lines on stderr")


@dataclass(frozen=True)
class GlobalOptions:
    """Options of every command."""

    debug: bool = _opt(False, "show tracebacks on errors")


@dataclass(frozen=True)
class ScoreFiles:
    """Files score writes."""

    json: str = _opt("", "also write the table, with every channel's plan, as JSON",
                     metavar="PATH")


@dataclass(frozen=True)
class OptimizeFiles:
    """Files optimize writes besides OUTPUT."""

    report: str = _opt("", "write the JSON report here", metavar="PATH")
    overwrite: bool = _opt(False, "allow OUTPUT to be the same file as INPUT")


@dataclass(frozen=True)
class RefitFiles:
    """Files refit reads and writes besides its models."""

    teacher: str = _opt("", _TEACHER, metavar="MODEL", required=True)
    report: str = _opt("", "write the JSON report here", metavar="PATH")


@dataclass(frozen=True)
class FinetuneFiles:
    """Files finetune reads."""

    teacher: str = _opt("", _TEACHER, metavar="MODEL", required=True)
    data: str = _opt("", _DATA, metavar="DATA", required=True)
    resume: bool = _opt(False, "continue from OUTPUT.ckpt/last.pt")


@dataclass(frozen=True)
class EvalFiles:
    """Files eval reads."""

    data: str = _opt("", _DATA, metavar="DATA", required=True)
    compare: str = _opt("", "report top-1 agreement with this model", metavar="MODEL")


@dataclass(frozen=True)
class GuardOptions:
    """Accuracy guard (docs/pipelines.md): the written model's drop against the original,
    measured on images the refit never saw."""

    max_drop: float = _opt(0.0, "search for the smallest file whose drop against the "
                                "original is at most D points: layers the held-out images "
                                "show most sensitive are left whole first, then gentler "
                                "G/T (overrides --G/--T). Drop: 100 x (1 - top-1 "
                                "agreement) on held-out calibration images; with "
                                "--validation labels, the accuracy lost; for outputs "
                                "that are not logits, 100 x the relative L2 error of "
                                "the outputs (0 = off)", metavar="D")
    validation: str = _opt("", "with --max-drop: labeled data the drop is measured on "
                               "(.npz x and y, or IDX images with their labels file "
                               "beside them), read with the data options", metavar="DATA")
    holdout: float = _opt(0.25, "with --max-drop and no --validation: fraction of the "
                                "calibration images held out from the refit to measure "
                                "the drop on (the last ones)")
    warn_error: float = _opt(0.1, "a written model whose outputs differ from the "
                                  "original's by more than this relative L2 error (on "
                                  "held-out or random inputs) gets a warning line")
    strict: bool = _opt(False, "exit 1 and write nothing when the measured error exceeds "
                               "--warn-error (or the drop exceeds --max-drop)")
    input_shape: str = _opt("", "C,H,W of one input image, for the multiply-adds of a "
                                "model whose height and width are symbolic (default: the "
                                "calibration images' size)", metavar="C,H,W")

    def __post_init__(self) -> None:
        for name, high in (("max_drop", 100.0), ("warn_error", math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float))
                                               and math.isfinite(value) and 0 <= value <= high):
                raise OptionError(f"--{name.replace('_', '-')}", f"must be a number in "
                                  f"[0, {high:g}] (0 = off), got {value!r}")
        value = self.holdout
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < 1):
            raise OptionError("--holdout", f"must be a fraction in (0, 1), got {value!r}")
        if self.validation and not self.max_drop:
            raise OptionError("--validation", "needs --max-drop")
        shape_list(self.input_shape)

    @property
    def active(self) -> bool:
        return bool(self.max_drop)


def shape_list(text: str, flag: str = "--input-shape") -> tuple[int, ...] | None:
    """``"3,32,32"`` -> ``(3, 32, 32)``; None for ""; an OptionError naming ``flag``."""
    if not text:
        return None
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError as exc:
        raise OptionError(flag, f"expected comma-separated integers, got {text!r}") from exc
    if not 2 <= len(values) <= 4 or min(values) < 1 or max(values) > 1 << 16:
        raise OptionError(flag, f"expected 2 to 4 sizes in [1, 65536] such as 3,32,32; "
                          f"got {text!r}")
    return values
