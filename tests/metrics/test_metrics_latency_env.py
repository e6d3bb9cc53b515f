"""Latency helpers and environment(): structure only, timings are never asserted."""

from __future__ import annotations

import json

import torch
from torch import nn

import prunekit
from prunekit.metrics import compare_latency, environment, measure_latency


def test_measure_latency_fields_and_thread_pinning():
    model = nn.Linear(16, 8).train()
    before = torch.get_num_threads()
    stats = measure_latency(model, torch.randn(4, 16), runs=4, warmup=1, threads=1)
    assert torch.get_num_threads() == before and model.training
    assert stats["threads"] == 1 and stats["runs"] == 4 and stats["warmup"] == 1
    for key in ("median_ms", "p10_ms", "p90_ms", "mean_ms"):
        assert isinstance(stats[key], float) and stats[key] > 0


def test_compare_latency_interleaves_and_reports_ratio_of_medians():
    calls: list[str] = []

    class Recorder(nn.Module):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            calls.append(self.tag)
            return self.fc(x)

    result = compare_latency(Recorder("a"), Recorder("b"), torch.randn(2, 8), runs=3, warmup=2)
    assert calls == ["a", "b"] * 5
    assert result["a_ms"] > 0 and result["b_ms"] > 0
    assert result["speedup"] == result["a_ms"] / result["b_ms"]
    assert result["threads"] == torch.get_num_threads()


def test_environment_is_json_and_names_versions():
    env = environment()
    json.dumps(env)
    assert env["prunekit"] == prunekit.__version__
    assert env["torch"] == torch.__version__
    assert env["threads"] == torch.get_num_threads()
    assert env["cores"] >= 1 and env["cpu"]


def test_a_frozen_torchscript_module_can_be_timed():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    frozen = torch.jit.freeze(torch.jit.script(model))
    assert not hasattr(frozen, "training")
    stats = measure_latency(frozen, torch.randn(2, 4), runs=2, warmup=1)
    assert stats["runs"] == 2
    assert compare_latency(model, frozen, torch.randn(2, 4), runs=2, warmup=0)["runs"] == 2
