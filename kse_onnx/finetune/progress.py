"""Moved to :mod:`kse_onnx.progress` (used by analysis, lowering and refit too); kept so
that ``from kse_onnx.finetune import progress`` goes on working."""

from __future__ import annotations

from ..progress import bar, interactive

__all__ = ["bar", "interactive"]
