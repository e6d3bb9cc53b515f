"""Timing with freed memory held: which allocator is asked for, what glibc is told, what is reported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.metrics import allocator, compare_latency, measure_latency


class FakeLibc:
    def __init__(self, accepts: bool = True) -> None:
        self.calls: list[tuple[int, int]] = []
        self.accepts = accepts

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return int(self.accepts)


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_held", False)
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    monkeypatch.delenv(allocator.ENV, raising=False)
    return fake


def test_default_is_held_and_tells_glibc_to_keep_freed_memory(libc):
    assert allocator.use_allocator(None) == "held"
    assert libc.calls == [
        (allocator.M_MMAP_MAX, 0),
        (allocator.M_TRIM_THRESHOLD, allocator.NEVER_TRIM),
    ]
    assert allocator.use_allocator("held") == "held"
    assert len(libc.calls) == 2  # set once per process


def test_system_leaves_the_allocator_alone(libc, monkeypatch):
    assert allocator.use_allocator("system") == "system"
    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.use_allocator(None) == "system"
    assert libc.calls == []


def test_once_held_stays_held_and_says_so(libc):
    allocator.use_allocator("held")
    assert allocator.use_allocator("system") == "held"


def test_without_glibc_or_when_refused_timings_report_system(libc, monkeypatch):
    libc.accepts = False
    assert allocator.use_allocator("held") == "system"
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.use_allocator("held") == "system"


def test_bad_allocator_names_its_source(libc, monkeypatch):
    with pytest.raises(ValueError, match="allocator must be one of held, system; got 'fast'"):
        measure_latency(nn.Linear(2, 2), torch.randn(1, 2), allocator="fast")
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    with pytest.raises(ValueError, match=r"\$PRUNEKIT_ALLOCATOR .* got 'jemalloc'"):
        compare_latency(nn.Linear(2, 2), nn.Linear(2, 2), torch.randn(1, 2))


def test_timings_report_the_allocator_they_ran_with(libc):
    x = torch.randn(2, 4)
    assert measure_latency(nn.Linear(4, 2), x, runs=2, warmup=0)["allocator"] == "held"
    both = compare_latency(nn.Linear(4, 2), nn.Linear(4, 1), x, runs=2, warmup=0)
    assert both["allocator"] == "held"
