"""Options of the steps that use calibration images (the refit, INT8, the accuracy
guard) and the checks across the option groups of ``optimize``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import OptionError
from .fields import (
    MINIMIZE,
    QUANTIZE_MODES,
    REFIT_MODES,
    check_choice,
    check_int,
    option,
    shape_list,
)


@dataclass(frozen=True)
class CalibrationOptions:
    """Unlabeled calibration images, for the post-training refit and int8-static."""

    calibration: str = option("", "calibration inputs: .npz (array x), IDX images or an image "
                                  "folder, read like finetune --data with the data options; "
                                  "labels are ignored. Turns on the refit (optimize) and "
                                  "calibrates int8-static")
    calibration_images: int = option(1024, "how many calibration inputs (the first)")

    def __post_init__(self) -> None:
        check_int(self, "calibration_images", low=1)


@dataclass(frozen=True)
class RefitOptions:
    """Post-training refit of the shared kernels from calibration images (docs/refit.md)."""

    refit: str = option("act", "with --calibration: 'ls' least-squares fit of each compressed "
                               "Conv's shared kernels and bias to the original's output "
                               "(residual-aware); 'act' then matches the output after the ReLU "
                               "that follows, by more least-squares rounds; 'block' (after "
                               "'ls') fits each residual block's Convs jointly to the block "
                               "output with Adam; 'distill' (after 'act') trains every weight "
                               "of the compressed model toward the original's outputs on the "
                               "calibration images (sharing and pruned channels kept); 'none' "
                               "skips the refit",
                        choices=REFIT_MODES)
    refit_rounds: int = option(6, "act: least-squares rounds matching the output after the ReLU")
    refit_steps: int = option(200, "block: Adam steps per block")
    refit_lr: float = option(1e-3, "block: Adam learning rate (relative to the weight scale)")
    refit_batch: int = option(64, "block: calibration images per Adam step")
    refit_classifier: bool = option(True, "least-squares refit of the final classifier (Gemm) "
                                          "to the original's logits")
    refit_damping: float = option(1e-6, "least squares: ridge damping, relative to the mean "
                                        "diagonal of the normal equations")
    refit_positions: int = option(131_072, "least squares: output positions (images x height x "
                                           "width) summed per layer, drawn at random when there "
                                           "are more; 0 = all")
    refit_seed: int = option(0, "seed of the sampled positions, of the held-out split, and "
                                "of the block and distill modes' minibatches and "
                                "augmentation")
    refit_holdout: float = option(0.2, "share of the calibration images held out: every fitted "
                                       "step (least squares, after-ReLU rounds, blocks, the "
                                       "classifier, distillation) is kept only where it lowers "
                                       "the error on them; 0 = judge on the fitted images")
    refit_distill_epochs: int = option(32, "distill: passes over the fitted calibration images")
    refit_distill_lr: float = option(1e-2, "distill: Adam learning rate relative to each "
                                           "tensor's RMS (one-epoch warm-up, cosine decay), "
                                           "times 20 / depth for a network of more than 20 "
                                           "weighted layers on its longest path")
    refit_distill_batch: int = option(32, "distill: calibration images per Adam step")
    refit_distill_mixup: bool = option(True, "distill: blend each augmented image with another "
                                             "of its batch (weight uniform in [0, 1]); the "
                                             "teacher sees the same blend")

    def __post_init__(self) -> None:
        if self.refit not in REFIT_MODES:
            raise OptionError("--refit", f"must be one of {REFIT_MODES}, got {self.refit!r}")
        check_int(self, "refit_distill_batch", low=1)
        for name in ("refit_rounds", "refit_steps", "refit_batch", "refit_seed",
                     "refit_positions"):
            check_int(self, name, low=0 if name != "refit_batch" else 1)
        check_int(self, "refit_distill_epochs", low=0)
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

    quantize: str = option("none", "quantize the output: int8-static (QDQ, calibrated; integer "
                                   "convs) or int8-dynamic (int8 weights, activations quantized "
                                   "at run time)", choices=QUANTIZE_MODES)
    float_output: bool = option(False, "optimize: write the float model, its layer forms chosen "
                                       "by timing the INT8 builds (to fine-tune, then finetune "
                                       "--quantize)")
    float_input_conv: bool = option(True, "int8-static: keep the Convs that read the model "
                                          "input in float (an image's first conv loses the most "
                                          "accuracy in INT8 and costs the least time)")
    short_names: bool = option(True, "int8 output: rename internal tensors t0, t1, ... (graph "
                                     "inputs/outputs and Conv node names kept): the quantizer's "
                                     "long names are a fifth of a small model's file")

    def __post_init__(self) -> None:
        check_choice("--quantize", self.quantize, QUANTIZE_MODES)

    @property
    def active(self) -> bool:
        return self.quantize != "none"

@dataclass(frozen=True)
class GuardOptions:
    """Accuracy guard (docs/pipelines.md): the written model's drop against the original,
    measured on images the refit never saw."""

    max_drop: float = option(0.0, "search for the smallest file whose drop against the original "
                                  "is at most D points: each layer gets a G/T of its own, the "
                                  "gentler the more sensitive it is per byte, or is left whole "
                                  "(overrides --G/--T/--layer-gt). Drop: 100 x (1 - top-1 "
                                  "agreement) on held-out calibration images the choice did not "
                                  "see; with --validation labels, the accuracy lost; for "
                                  "outputs that are not logits, 100 x the relative L2 error of "
                                  "the outputs (0 = off)", metavar="D")
    validation: str = option("", "with --max-drop: labeled data the drop is measured on (.npz x "
                                 "and y, or IDX images with their labels file beside them), "
                                 "read with the data options", metavar="DATA")
    minimize: str = option("size", "with --max-drop: what the search makes smallest within "
                                   "D: 'size' (the file: G/T and layers left whole) or "
                                   "'latency' (the fastest model: the lowest "
                                   "--target-latency R that holds the drop, by bisection)",
                           choices=MINIMIZE)
    holdout: float = option(0.5, "with --max-drop and no --validation: fraction of the "
                                 "calibration images held out from the refit to measure the "
                                 "drop on (the last ones)")
    confirm: float = option(0.5, "with --max-drop: fraction of the held-out images (or of "
                                 "--validation) kept back to confirm the chosen model; its "
                                 "drop on them, which neither the refit nor the choice saw, "
                                 "is the drop reported")
    warn_error: float = option(0.1, "a written model whose outputs differ from the "
                                    "original's by more than this relative L2 error "
                                    "(on held-out or random inputs) gets a warning "
                                    "line")
    strict: bool = option(False, "exit 1 and write nothing when the measured error exceeds "
                                 "--warn-error (or the drop exceeds --max-drop)")
    input_shape: str = option("", "C,H,W of one input image, for the multiply-adds of a model "
                                  "whose height and width are symbolic (default: the "
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
        value = self.confirm
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < 1):
            raise OptionError("--confirm", f"must be a fraction in (0, 1), got {value!r}")
        check_choice("--minimize", self.minimize, MINIMIZE)
        if self.validation and not self.max_drop:
            raise OptionError("--validation", "needs --max-drop")
        shape_list(self.input_shape)

    @property
    def active(self) -> bool:
        return bool(self.max_drop)


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
        replayed = lower is not None and lower.choices
        if (budget.budget_importance == "sensitivity" and not replayed
                and calibration is not None and not calibration.calibration):
            raise OptionError("--budget-importance", "sensitivity needs --calibration (its "
                                                     "images measure each group's cost)")
        if (budget.budget_blocks and not replayed and calibration is not None
                and not calibration.calibration):
            raise OptionError("--budget-blocks", "needs --calibration (its images measure "
                                                 "what each block costs)")
    if (quantize is not None and quantize.quantize == "int8-static"
            and not (calibration is not None and calibration.calibration)):
        raise OptionError("--calibration", "int8-static needs calibration inputs")
