"""Progress of long loops: a tqdm bar (rate, ETA) when stderr is a terminal, otherwise
nothing per step (the caller logs one line per epoch); nothing at all when quiet."""

from __future__ import annotations

import sys


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


def interactive(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(total: int, desc: str, unit: str = "img", quiet: bool = False, stream=None,
        **options):
    """A progress bar over ``total`` units, or a silent stand-in (quiet, or not a
    terminal). ``update(n, **postfix)`` advances it; ``close()`` removes it; ``options``
    go to tqdm."""
    stream = stream or sys.stderr
    if quiet or not interactive(stream):
        return _Silent()
    return _Bar(total, desc, unit, stream, **options)
