"""Text for the terminal: names from an untrusted model may hold escape sequences (colour,
cursor moves, title changes, right-to-left overrides). While the CLI runs, stdout and
stderr are :class:`CleanStream` wrappers, so everything it prints goes through
:func:`clean`, which shows such characters as ``\\x1b``-style escapes."""

from __future__ import annotations

import unicodedata


def _escape(ch: str) -> str:
    if ch in "\n\t":
        return ch
    if unicodedata.category(ch)[0] == "C":  # control, format, surrogate, private, unassigned
        return ch.encode("unicode_escape").decode("ascii")
    return ch


def clean(text: str) -> str:
    """``text`` with every control or format character other than newline and tab escaped."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


class CleanStream:
    """A text stream whose ``write`` passes text through :func:`clean`; everything else
    (flush, fileno, encoding, ...) is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(clean(text))
        return len(text)

    @property
    def raw(self):
        """The wrapped stream, for a progress bar: its ``\\r`` must stay a carriage return
        (its text is ours, not a model's)."""
        return self._stream

    def __getattr__(self, name):
        return getattr(self._stream, name)
