"""Latency measured side by side: models alternate within each repeat, so drift of a
noisy machine hits all of them alike, and each model's time is the median."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from onnxruntime import InferenceSession

from ..errors import ModelError, first_line
from .ort import random_inputs, session


@dataclass
class Timing:
    label: str
    median_ms: float
    ratio: float  # median over the first model's median
    runs: int = 0  # timed runs behind the median (fewer when dropped as clearly slower)


def interleaved_latency(models: dict, batch: int, threads: int = 1, repeats: int = 30,
                        warmup: int = 3, seed: int = 0, providers=("CPUExecutionProvider",),
                        budget_s: float | None = None, min_repeats: int = 7,
                        drop_slower: float = 0.0, drop_after: int = 3,
                        settled=None) -> list[Timing]:
    """Median latency of each model (label -> ModelProto, serialized bytes, or a session
    made earlier with these ``threads`` and ``providers``, reused) on the same input.
    With ``budget_s``, the repeats are cut so that the timed loop takes about that long
    (never fewer than ``min_repeats``, never more than ``repeats``).

    Early stops, both after whole rounds, so every model still alternates with the others:
    - ``drop_slower`` (> 1): from round ``drop_after`` on, a model other than the first
      whose median exceeds ``drop_slower`` times the fastest median stops being run (its
      median so far stays: it is clearly slower, whatever its exact time);
    - ``settled(medians)`` (label -> median s so far), asked from round ``min_repeats``
      on: True ends the loop (the caller's decision no longer depends on more rounds).
    """
    sessions = {label: m if isinstance(m, InferenceSession) else
                session(m, threads=threads, providers=providers)
                for label, m in models.items()}
    first = next(iter(sessions.values()))
    feeds = random_inputs(first, batch, seed)
    round_s = 0.0
    for label, sess in sessions.items():
        for _ in range(max(1, warmup)):
            start = time.perf_counter()
            _run(sess, feeds, label)
        round_s += time.perf_counter() - start
    if budget_s is not None:
        repeats = max(min_repeats, min(repeats, int(budget_s / max(round_s, 1e-9))))
    samples = {label: [] for label in sessions}
    timed = dict(sessions)
    reference = next(iter(sessions))
    for done in range(1, repeats + 1):
        for label, sess in timed.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            samples[label].append(time.perf_counter() - start)
        if drop_slower > 1 and done >= drop_after and len(timed) > 1:
            now = {label: float(np.median(samples[label])) for label in timed}
            limit = drop_slower * min(now.values())
            timed = {label: sess for label, sess in timed.items()
                     if label == reference or now[label] <= limit}
        if settled is not None and done >= min_repeats and done < repeats and settled(
                {label: float(np.median(s)) for label, s in samples.items()}):
            break
    medians = {label: float(np.median(s)) * 1e3 for label, s in samples.items()}
    base = medians[reference]
    return [Timing(label, ms, ms / base, len(samples[label])) for label, ms in medians.items()]


def _run(sess, feeds, label) -> None:
    """One run; a model that loads but fails to run is the model's fault, named."""
    try:
        sess.run(None, feeds)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run {label}: {first_line(exc)}") from exc


def bench_models(models: dict, batches: list[int], threads: int, repeats: int,
                 providers) -> list[tuple[int, list[Timing]]]:
    """(batch, timings) rows of ``kse-onnx bench``: every model must load and run at every
    batch (a model whose inputs fix another batch cannot: it is an error, not a row
    timed at its own batch); a failure is a one-line error naming the model."""
    sessions = {}
    for label, model in models.items():
        try:
            sessions[label] = session(model, threads=threads, providers=providers)
        except ModelError as exc:
            raise ModelError(f"{label}: {exc}") from None
    for label, sess in sessions.items():
        for i in sess.get_inputs():
            fixed = i.shape[0] if i.shape and isinstance(i.shape[0], int) else None
            wrong = [b for b in batches if fixed and fixed > 0 and b != fixed]
            if wrong:
                raise ModelError(f"{label}: input {i.name!r} has a fixed batch of {fixed}; "
                                 f"it cannot run at --batch {wrong[0]}")
    return [(b, interleaved_latency(sessions, b, threads, repeats, providers=providers))
            for b in batches]


def format_timings(rows: list[tuple[int, list[Timing]]], providers) -> str:
    """Table of (batch, timings) rows: median ms and ratio to the first model."""
    lines = [f"providers: {', '.join(providers)}; ratio = median / first model's median"]
    for batch, timings in rows:
        cells = ", ".join(f"{t.label} {t.median_ms:.3f} ms ({t.ratio:.3f}x)" for t in timings)
        lines.append(f"batch {batch}: {cells}")
    return "\n".join(lines)
