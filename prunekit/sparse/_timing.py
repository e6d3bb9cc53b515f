"""Interleaved median timing of a few alternatives (what `convert` uses to pick a kernel)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

# A timer takes the layer name and {candidate: zero-argument run} and returns {candidate: ms/call}.
Timer = Callable[[str, dict[str, Callable[[], Any]]], dict[str, float]]


def _calls_ms(run: Callable[[], Any], reps: int) -> list[float]:
    """Milliseconds of each of `reps` calls, timed one by one."""
    times = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        run()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def interleaved_median(
    layer: str,
    runs: dict[str, Callable[[], Any]],
    *,
    rounds: int = 9,
    round_ms: float = 2.0,
    max_reps: int = 2000,
) -> dict[str, float]:
    """Milliseconds per call of each run: the median over `rounds` rounds, the candidates taking
    turns (rotated order) in every round. A round times calls one by one for about `round_ms` and
    keeps their median, so a call interrupted by another process does not count.

    Interleaving makes every candidate see the same machine state (other processes, clocks), so
    their ratio is trustworthy even when absolute times drift.
    """
    del layer  # the default timer does not need it; custom timers may
    reps = {}
    for name, run in runs.items():
        run()  # warm-up: first-call allocations, lazily built caches
        first = min(_calls_ms(run, 3))
        reps[name] = max(1, min(max_reps, int(round_ms / max(first, 1e-4))))
    samples: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(statistics.median(_calls_ms(runs[name], reps[name])))
    return {name: float(statistics.median(times)) for name, times in samples.items()}
