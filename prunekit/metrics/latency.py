"""Latency: warm-up, then the median of many timed runs, with the thread count pinned (DESIGN §5).

>>> import torch, prunekit.metrics as pm
>>> stats = pm.measure_latency(torch.nn.Linear(8, 4), torch.randn(2, 8), runs=5, warmup=1)
>>> sorted(stats)  # doctest: +NORMALIZE_WHITESPACE
['allocator', 'mean_ms', 'median_ms', 'p10_ms', 'p90_ms', 'runs', 'threads', 'warmup']

Timings hold freed memory in the process (`allocator="held"`, see `prunekit.metrics.allocator`):
without it, glibc's page faults make the same layer's latency swing more than 2x.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from prunekit.metrics._call import (
    ForwardFn,
    as_inputs,
    device_and_dtype,
    inference,
    make_runner,
    synchronize,
)
from prunekit.metrics.allocator import use_allocator

__all__ = ["measure_latency", "compare_latency", "pinned_threads"]


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Run the block with `torch.set_num_threads(threads)`, restoring the previous value after.

    `threads=None` keeps the current setting. Yields the thread count in effect.
    """
    previous = torch.get_num_threads()
    if threads is None:
        yield previous
        return
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def _check_counts(runs: int, warmup: int) -> None:
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")


def _timed(run: Callable[[], Any], device: str) -> float:
    """Milliseconds for one call, device work included."""
    start = time.perf_counter_ns()
    run()
    synchronize(device)
    return (time.perf_counter_ns() - start) / 1e6


def time_interleaved(
    calls: list[Callable[[], Any]], runs: int, warmup: int, device: str = "cpu"
) -> list[list[float]]:
    """Milliseconds of each call over `runs` rounds of one call each, in turn: a slow phase of
    the machine (other processes, frequency) then hits every call alike, so their ratios hold."""
    for _ in range(warmup):
        for call in calls:
            call()
    synchronize(device)
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, timed in zip(calls, times, strict=True):
            timed.append(_timed(call, device))
    return times


def _summary(times_ms: list[float]) -> dict[str, float]:
    if len(times_ms) > 1:
        deciles = statistics.quantiles(times_ms, n=10, method="inclusive")
        p10, p90 = deciles[0], deciles[-1]
    else:
        p10 = p90 = times_ms[0]
    return {
        "median_ms": float(statistics.median(times_ms)),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "mean_ms": float(statistics.fmean(times_ms)),
    }


def measure_latency(
    model: nn.Module,
    inputs: Any,
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    kwargs: dict[str, Any] | None = None,
    forward_fn: ForwardFn | None = None,
    allocator: str | None = None,
) -> dict[str, Any]:
    """Time `runs` inferences after `warmup` untimed ones; eval mode and inference mode.

    Returns `{"median_ms", "p10_ms", "p90_ms", "mean_ms", "runs", "warmup", "threads",
    "allocator"}`. `threads` pins `torch.set_num_threads` for the measurement (restored
    afterwards); `None` measures with the current setting, which is reported. `allocator`:
    `"held"` (default) or `"system"`, see `prunekit.metrics.allocator`.
    """
    _check_counts(runs, warmup)
    held = use_allocator(allocator)
    inputs = as_inputs(inputs)
    run = make_runner(model, inputs, kwargs, forward_fn)
    device, _ = device_and_dtype(model, inputs)
    with pinned_threads(threads) as used, inference(model):
        (times,) = time_interleaved([run], runs, warmup, device)
    return {**_summary(times), "runs": runs, "warmup": warmup, "threads": used, "allocator": held}


def compare_latency(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Any,
    *,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    kwargs: dict[str, Any] | None = None,
    forward_fn: ForwardFn | None = None,
    allocator: str | None = None,
) -> dict[str, Any]:
    """Time two models on the same inputs in one process, interleaved a, b, a, b, ...

    Interleaving exposes both models to the same machine noise (other processes, frequency
    scaling), so the ratio of medians is far steadier than two separate measurements.
    Returns `{"a_ms", "b_ms", "speedup", "a_p10_ms", "a_p90_ms", "b_p10_ms", "b_p90_ms",
    "runs", "warmup", "threads", "allocator"}` with medians in ms and `speedup = a_ms / b_ms`
    (> 1 when b is faster, e.g. `compare_latency(original, pruned, x)`); `allocator` as in
    `measure_latency`.
    """
    _check_counts(runs, warmup)
    held = use_allocator(allocator)
    inputs = as_inputs(inputs)
    run_a = make_runner(model_a, inputs, kwargs, forward_fn)
    run_b = make_runner(model_b, inputs, kwargs, forward_fn)
    device, _ = device_and_dtype(model_a, inputs)
    with pinned_threads(threads) as used, inference(model_a), inference(model_b):
        times_a, times_b = time_interleaved([run_a, run_b], runs, warmup, device)
    a, b = _summary(times_a), _summary(times_b)
    return {
        "a_ms": a["median_ms"],
        "b_ms": b["median_ms"],
        "speedup": a["median_ms"] / b["median_ms"] if b["median_ms"] > 0 else float("inf"),
        "a_p10_ms": a["p10_ms"],
        "a_p90_ms": a["p90_ms"],
        "b_p10_ms": b["p10_ms"],
        "b_p90_ms": b["p90_ms"],
        "runs": runs,
        "warmup": warmup,
        "threads": used,
        "allocator": held,
    }
