"""Latency of exported artefacts in their own runtime, two artefacts interleaved (DESIGN §5)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

Runner = Callable[[tuple, dict], list[torch.Tensor]]


def _timed(run: Runner, args: tuple, kwargs: dict) -> float:
    start = time.perf_counter_ns()
    run(args, kwargs)
    return (time.perf_counter_ns() - start) / 1e6


def _stats(times: list[float]) -> dict[str, float]:
    if len(times) > 1:
        deciles = statistics.quantiles(times, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = times[0]
    return {"ms": statistics.median(times), "p10_ms": p10, "p90_ms": p90}


def time_runners(
    runners: list[Runner], args: tuple, kwargs: dict, *, runs: int, warmup: int
) -> list[dict[str, float]]:
    """Median/p10/p90 ms of each runner, called in turn (a, b, a, b, ...) so that both see the
    same machine state; the ratio of medians is then far steadier than separate measurements."""
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    for _ in range(warmup):
        for run in runners:
            run(args, kwargs)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for run, bucket in zip(runners, times, strict=True):
            bucket.append(_timed(run, args, kwargs))
    return [_stats(t) for t in times]


def summary(stats: list[dict[str, float]], **context: Any) -> dict[str, Any]:
    """`{"ms", "p10_ms", "p90_ms", [baseline_ms, baseline_p10_ms, baseline_p90_ms, speedup], ...}`."""
    out: dict[str, Any] = dict(stats[0])
    if len(stats) > 1:
        base = stats[1]
        out.update(
            baseline_ms=base["ms"],
            baseline_p10_ms=base["p10_ms"],
            baseline_p90_ms=base["p90_ms"],
            speedup=base["ms"] / out["ms"] if out["ms"] > 0 else float("inf"),
        )
    out.update(context)
    return out
