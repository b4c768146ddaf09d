"""Progress of long loops, for every layer (analysis, ``auto`` timing, refit, finetune).

Three modes, chosen by :func:`bar` from the stream and ``quiet``:
- a terminal: a tqdm bar with rate and ETA, redrawn in place (``\\r``) and removed at
  the end;
- not a terminal (a log file, a pipe, CI): never a bar, so no ``\\r`` reaches a log.
  With ``lines=True`` (coarse steps: layers, convs) plain lines once the work has run
  ``LINE_AFTER_S`` (quick jobs stay silent): one per tenth of the work and one at the
  end; with ``lines=False`` (fine steps: images) nothing, the caller logging one line
  per epoch;
- ``quiet``: nothing at all.

A bar writes to the stream under the CLI's escaping wrapper (:mod:`.terminal`), which
would print its ``\\r`` as text; descriptions are ours, never names from a model.
"""

from __future__ import annotations

import sys
import time

from .terminal import CleanStream

LINE_STEPS = 10  # lines mode: a line per tenth of the work
LINE_AFTER_S = 10.0  # lines mode: nothing before the work has run this long


class _Silent:
    def update(self, n: int = 1, **postfix) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self, total: int, desc: str, unit: str, stream, **options):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False,
                        dynamic_ncols=True, **options)

    def update(self, n: int = 1, **postfix) -> None:
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class _Lines:
    """One line per tenth of ``total`` (and at the end): ``desc: done/total unit, rate,
    ETA``, for logs."""

    def __init__(self, total: int, desc: str, unit: str, stream):
        self.total, self.desc, self.unit, self.stream = max(total, 0), desc, unit, stream
        self.done, self.shown = 0, 0
        self.started = time.perf_counter()
        self.step = max(1, -(-self.total // LINE_STEPS))

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        crossed = self.done // self.step > self.shown // self.step or self.done >= self.total
        if not crossed or self.done == self.shown:
            return
        if time.perf_counter() - self.started < LINE_AFTER_S:
            return  # quick work: no lines at all (this step is not counted as shown)
        self.shown = self.done
        self._line(postfix)

    def _line(self, postfix) -> None:
        elapsed = time.perf_counter() - self.started
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}, {elapsed:.1f} s"
        if 0 < self.done < self.total:
            text += f", ETA {elapsed / self.done * (self.total - self.done):.0f} s"
        if postfix:
            text += ", " + ", ".join(f"{k}={v}" for k, v in postfix.items())
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        pass


def interactive(stream=None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(total: int, desc: str, unit: str = "img", quiet: bool = False, stream=None,
        lines: bool = False, **options):
    """Progress over ``total`` units: a bar on a terminal, else lines (``lines=True``) or
    nothing, and nothing when ``quiet``. ``update(n, **postfix)`` advances it;
    ``close()`` removes a bar; ``options`` go to tqdm."""
    stream = stream or sys.stderr
    if quiet:
        return _Silent()
    if not interactive(stream):
        return _Lines(total, desc, unit, stream) if lines else _Silent()
    raw = stream.raw if isinstance(stream, CleanStream) else stream
    return _Bar(total, desc, unit, raw, **options)
