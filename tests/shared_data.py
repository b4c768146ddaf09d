"""Test data that lives outside the repository, in ../shared beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the repository
REQUIRE_SHARED = "KSE_ONNX_REQUIRE_SHARED"


def shared_file(relative: str) -> Path:
    """A file of ../shared (the KSE authors' trained weights): a test that needs it fails
    when ``KSE_ONNX_REQUIRE_SHARED=1`` (set by .ci/run), and skips with the reason elsewhere
    (a clone without ../shared)."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is missing (it lives in ../shared beside the repository)"
        if os.environ.get(REQUIRE_SHARED) == "1":
            pytest.fail(f"{message}; {REQUIRE_SHARED}=1 requires it")
        pytest.skip(message)
    return path
