"""Errors the CLI turns into one-line messages and exit codes (2 usage, 1 model)."""

from __future__ import annotations


class KSEError(Exception):
    """Base class: a failure the user can act on, printed without a traceback."""

    exit_code = 1


class OptionError(KSEError):
    """A bad option value; names the flag."""

    exit_code = 2

    def __init__(self, option: str, message: str):
        super().__init__(f"option {option}: {message}")
        self.option = option


class ModelError(KSEError):
    """A model file that cannot be read or processed; names the file or node."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (or its type name when it has none): the
    one-line summary our errors quote from onnx, onnxruntime and protobuf."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
