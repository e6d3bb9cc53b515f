"""Latency of exported artefacts in their own runtime, two artefacts interleaved (DESIGN §5)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from prunekit.metrics.latency import _check_counts, _summary, time_interleaved

Runner = Callable[[tuple, dict], list[torch.Tensor]]


def _stats(times: list[float]) -> dict[str, float]:
    stats = _summary(times)
    return {"ms": stats["median_ms"], "p10_ms": stats["p10_ms"], "p90_ms": stats["p90_ms"]}


def time_runners(
    runners: list[Runner], args: tuple, kwargs: dict, *, runs: int, warmup: int
) -> list[dict[str, float]]:
    """Median/p10/p90 ms of each runner, called in turn (a, b, a, b, ...) so that both see the
    same machine state; the ratio of medians is then far steadier than separate measurements."""
    _check_counts(runs, warmup)
    calls = [functools.partial(run, args, kwargs) for run in runners]
    return [_stats(t) for t in time_interleaved(calls, runs, warmup)]


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
