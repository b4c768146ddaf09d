"""Every path a command writes, checked before any work; writes that leave nothing half-done.

:func:`check_paths` is called by each command that writes (``optimize`` OUT and
``--report``, ``score --json``, ``finetune`` OUT and its checkpoint folder) with all of
its inputs (models, their external-data files, data, calibration, choices) and outputs:
- no output is, or links to (symlink or hard link), an input or another output;
- every output's folder exists and is writable, and an existing output is a regular
  file (a folder output, an existing folder);
so a bad path fails in one line before minutes of work, and nothing it was not given as
an output is ever written. :func:`atomic_write` writes a temporary file in the target
folder and renames it into place; on any failure or signal the temporary file is removed.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import ModelError, OptionError


def _same(a: Path, b: Path) -> bool:
    """Same file: equal after resolving links, or one inode (hard links)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_paths(inputs: dict, outputs: dict, allow: tuple[tuple[str, str], ...] = ()) -> None:
    """``inputs`` and ``outputs``: label (the flag or argument) -> path, list of paths or
    None. ``allow`` lists (output, input) pairs that may coincide (``--overwrite``).
    Output labels ending in "/" are folders."""
    ins = [(label, Path(p)) for label, v in inputs.items() if v
           for p in (v if isinstance(v, (list, tuple)) else [v])]
    outs = [(label, Path(v)) for label, v in outputs.items() if v]
    for i, (label, path) in enumerate(outs):
        _check_output(label, path)
        for other_label, other in outs[:i]:
            if _same(path, other):
                raise OptionError(label.rstrip("/"), f"{path} is also the {other_label} "
                                  "output: every output needs its own path")
        for in_label, source in ins:
            if (label, in_label) not in allow and _same(path, source):
                hint = ("; pass --overwrite to replace it" if (label, in_label) ==
                        ("OUTPUT", "INPUT") and path == source else "")
                shown = "" if path == source else f"({source}) "
                raise OptionError(label.rstrip("/"), f"{path} is the {in_label} input "
                                  f"{shown}and would be overwritten{hint}")


def _check_output(label: str, path: Path) -> None:
    flag = label.rstrip("/")
    folder_output = label.endswith("/")
    if str(path) in ("", "."):
        raise OptionError(flag, "empty path")
    if "\0" in str(path):
        raise OptionError(flag, "path contains a NUL byte")
    if name_too_long(path):
        if "weights file" in label:  # written only beside a model over 2 GiB: save refuses it
            return
        derived = "" if flag == "OUTPUT" else " (named after OUTPUT: shorten OUTPUT)"
        raise OptionError(flag, f"{path.name[:24]}...: a file name of "
                                f"{len(os.fsencode(path.name))} bytes, longer than the file "
                                f"system allows{derived}")
    if path.exists() or path.is_symlink():
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise OptionError(flag, f"{path}: {exc.strerror}") from None
        if folder_output and not stat.S_ISDIR(mode):
            raise OptionError(flag, f"{path} exists and is not a folder")
        if not folder_output and stat.S_ISDIR(mode):
            raise OptionError(flag, f"{path} is a directory, expected a file path")
        if not folder_output and not stat.S_ISREG(mode):
            raise OptionError(flag, f"{path} exists and is not a regular file")
        if folder_output and not os.access(path, os.W_OK | os.X_OK):
            raise OptionError(flag, f"{path}: folder is not writable")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OptionError(flag, f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OptionError(flag, f"{path}: output folder {folder} is not writable")


def regular_file(path, what: str = "file") -> Path:
    """``path`` if it is an existing regular file (not a folder, FIFO or device, which
    would block or mislead a reader); else a one-line error."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ModelError(f"{path}: is a directory, expected {what}")
    if not stat.S_ISREG(mode):
        raise ModelError(f"{path}: not a regular file (a FIFO or device), expected {what}")
    return path


TEMPORARY_PREFIX = ".kse-onnx-"


def temporary_file(folder: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """(descriptor, path) of a new empty file in ``folder`` with a short random name,
    independent of the output's name (a valid output name of 255 bytes leaves no room
    for a suffix)."""
    return tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)


def name_too_long(path: Path) -> bool:
    """Whether ``path``'s last component is longer than its folder's file system allows."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    return len(os.fsencode(path.name)) > limit


def atomic_write(path, data: bytes | str | None = None, writer=None) -> None:
    """Write ``data`` (or call ``writer(file)``) to a temporary file in ``path``'s folder,
    then rename it to ``path``. Failures, Ctrl-C and SIGTERM leave no temporary file;
    filesystem errors are one-line errors naming the path."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = temporary_file(folder)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it 0600; an output is an ordinary file
        with os.fdopen(fd, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise ModelError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
