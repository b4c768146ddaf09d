"""Every user-facing setting, defined once.

Each option class is a frozen dataclass whose fields carry their CLI help in
``metadata`` (:func:`.fields.option`); :mod:`kse_onnx.cli` turns the fields into
``--flags`` and the Python API takes the same objects. By command family:
:mod:`.analysis` (KSE, selection, lowering, targets), :mod:`.calibrated` (refit, INT8,
the accuracy guard), :mod:`.commands` (finetune, verify, bench, files); :mod:`.fields`
holds the field machinery and the enumerations. Every public name is importable from
here.
"""

from .analysis import BudgetOptions, KSEOptions, LowerOptions, SelectOptions, TargetOptions
from .calibrated import (
    CalibrationOptions,
    GuardOptions,
    QuantizeOptions,
    RefitOptions,
    check_combined,
)
from .commands import (
    BenchOptions,
    DataOptions,
    EvalFiles,
    FinetuneFiles,
    FinetuneOptions,
    GlobalOptions,
    OptimizeFiles,
    ProgressOptions,
    RefitFiles,
    ScoreFiles,
    VerifyOptions,
)
from .fields import (
    BUDGET_IMPORTANCES,
    DEFAULT_BATCH,
    DEFAULT_LR,
    ENTROPY_MODES,
    KMEANS_INITS,
    LOSSES,
    LOWERINGS,
    MAX_GLOB,
    MAX_GLOBS,
    MAX_LEVELS,
    OPTIMIZERS,
    PROVIDER_NAMES,
    PROVIDERS,
    QUANTIZE_MODES,
    REFIT_MODES,
    SCHEDULES,
    as_dict,
    batch_list,
    shape_list,
)

# keyword of kse_onnx.api.optimize_model -> its option class (calibration apart: it
# also takes arrays); the Olive pass takes every one of them
OPTIMIZE_OPTIONS = {"kse": KSEOptions, "select": SelectOptions, "lower_options": LowerOptions,
                    "target": TargetOptions, "quantize": QuantizeOptions, "data": DataOptions,
                    "refit": RefitOptions, "budget": BudgetOptions, "guard": GuardOptions,
                    "progress": ProgressOptions}

__all__ = [
    "BUDGET_IMPORTANCES", "DEFAULT_BATCH", "DEFAULT_LR", "ENTROPY_MODES", "KMEANS_INITS",
    "LOSSES", "LOWERINGS",
    "MAX_GLOB", "MAX_GLOBS", "MAX_LEVELS", "OPTIMIZERS", "OPTIMIZE_OPTIONS", "PROVIDERS",
    "PROVIDER_NAMES", "QUANTIZE_MODES", "REFIT_MODES", "SCHEDULES", "BenchOptions",
    "BudgetOptions", "CalibrationOptions", "DataOptions", "EvalFiles", "FinetuneFiles",
    "FinetuneOptions", "GlobalOptions", "GuardOptions", "KSEOptions", "LowerOptions",
    "OptimizeFiles", "ProgressOptions", "QuantizeOptions", "RefitFiles", "RefitOptions",
    "ScoreFiles", "SelectOptions", "TargetOptions", "VerifyOptions", "as_dict", "batch_list",
    "check_combined", "shape_list",
]
