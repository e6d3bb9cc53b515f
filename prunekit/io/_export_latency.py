"""Latency of exported artefacts in their own runtime, two artefacts interleaved (DESIGN §5)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from prunekit.metrics.latency import _check_counts, _summary

Runner = Callable[[tuple, dict], list[torch.Tensor]]


def _timed(run: Runner, args: tuple, kwargs: dict) -> float:
    start = time.perf_counter_ns()
    run(args, kwargs)
    return (time.perf_counter_ns() - start) / 1e6


def _stats(times: list[float]) -> dict[str, float]:
    stats = _summary(times)
    return {"ms": stats["median_ms"], "p10_ms": stats["p10_ms"], "p90_ms": stats["p90_ms"]}


def time_runners(
    runners: list[Runner], args: tuple, kwargs: dict, *, runs: int, warmup: int
) -> list[dict[str, float]]:
    """Median/p10/p90 ms of each runner, called in turn (a, b, a, b, ...) so that both see the
    same machine state; the ratio of medians is then far steadier than separate measurements."""
    _check_counts(runs, warmup)
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
