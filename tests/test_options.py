"""Option dataclasses on their own: the checks of __post_init__ and the helpers."""

from __future__ import annotations

import pytest

from kse_onnx.errors import OptionError
from kse_onnx.options import BenchOptions, SelectOptions, VerifyOptions


def test_skip_reason():
    select = SelectOptions(only=("conv*",), skip=("conv2",))
    assert select.skip_reason("conv1") is None
    assert select.skip_reason("conv2") == "matched by --skip"
    assert select.skip_reason("gemm1") == "not matched by --only"
    assert SelectOptions().skip_reason("anything") is None


@pytest.mark.parametrize("cls, kwargs, flag", [
    (VerifyOptions, {"batch": 0}, "--batch"), (VerifyOptions, {"rtol": -1.0}, "--rtol"),
    (VerifyOptions, {"seed": -1}, "--seed"), (VerifyOptions, {"batch": 1.5}, "--batch"),
    (BenchOptions, {"provider": "tpu"}, "--provider"), (BenchOptions, {"batch": "0"}, "--batch"),
    (BenchOptions, {"threads": 0}, "--threads"), (BenchOptions, {"repeats": 0}, "--repeats"),
])
def test_verify_and_bench_checks(cls, kwargs, flag):
    with pytest.raises(OptionError, match=flag):
        cls(**kwargs)


def test_verify_and_bench_defaults_are_valid():
    assert VerifyOptions().rtol == 0.0 and BenchOptions().batch == "1"
