"""LatencyModel: per-layer tables over channel counts, interpolated; checked with a stand-in clock
whose "milliseconds" are multiply-adds, so every prediction has an exact expected value."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.metrics import LatencyModel

OVERHEAD = 1000.0  # the stand-in clock's cost of everything that is not a layer


def layer_macs(module: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return macs_of_output(module, module(x))


def macs_of_output(module: nn.Module, out: torch.Tensor) -> float:
    if isinstance(module, nn.Linear):
        return float(out.numel() * module.in_features)
    k = module.kernel_size[0] * module.kernel_size[1]
    return float(out.numel() * module.in_channels // module.groups * k)


def clock(module: nn.Module, x) -> float:
    """A layer costs its MACs; a whole model its layers' MACs plus OVERHEAD."""
    if isinstance(module, nn.Linear | nn.Conv2d):
        return layer_macs(module, x)
    total = 0.0

    def add(m, _args, out):
        nonlocal total
        total += macs_of_output(m, out)

    hooks = [
        m.register_forward_hook(add)
        for m in module.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    with torch.no_grad():
        module(x)
    for h in hooks:
        h.remove()
    return total + OVERHEAD


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),  # depthwise
        nn.Conv2d(16, 24, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 5),
    ).eval()


X = torch.randn(2, 3, 8, 8)


def test_full_size_prediction_is_the_measurement():
    model = net()
    lm = LatencyModel.fit(model, X, timer=clock)
    assert set(lm.layers) == {"0", "3", "4", "8"}
    assert lm.layers["3"].kind == "depthwise"
    assert lm.remainder_ms == pytest.approx(OVERHEAD)
    assert lm.predict(model) == pytest.approx(lm.measured_ms)


def test_pruned_prediction_matches_the_clock_exactly():
    model = net()
    lm = LatencyModel.fit(model, X, timer=clock)
    pruned = pk.prune(copy.deepcopy(model), X, ratio=0.4).model
    acts = {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in pruned.named_modules()
        if n in lm.layers
    }
    share = sum(acts[n] * t.out_positions for n, t in lm.layers.items()) / lm.activations
    expected = clock(pruned, X) - OVERHEAD + OVERHEAD * share
    assert pruned[0].out_channels < 16 and pruned[4].out_channels < 24
    assert lm.predict(pruned) == pytest.approx(expected, rel=1e-6)


def test_round_trip_through_json(tmp_path):
    lm = LatencyModel.fit(net(), X, timer=clock)
    lm.save(tmp_path / "lm.json")
    again = LatencyModel.load(tmp_path / "lm.json")
    assert again.predict(net()) == pytest.approx(lm.predict(net()))


def test_another_architecture_is_refused():
    lm = LatencyModel.fit(net(), X, timer=clock)
    with pytest.raises(ValueError, match="no layer"):
        lm.predict(nn.Sequential(nn.Linear(3, 3)))


def test_calibration_learns_that_the_overhead_is_fixed():
    model = net()
    lm = LatencyModel.fit(model, X, timer=clock)
    pruned = pk.prune(copy.deepcopy(model), X, ratio=0.5).model
    assert lm.predict(pruned) < clock(pruned, X)  # it assumed the overhead shrinks too
    tuned = lm.calibrated(pruned, clock(pruned, X))
    assert tuned.fixed_ms == pytest.approx(OVERHEAD)
    other = pk.prune(copy.deepcopy(model), X, ratio=0.25).model
    assert tuned.predict(other) == pytest.approx(clock(other, X), rel=1e-6)
    assert tuned.predict(model) == pytest.approx(lm.measured_ms)


def test_exact_mode_times_counts_off_the_grid_once(tmp_path):
    """A clock that doubles a layer's cost when its output count is not a multiple of 4 (CPU
    vector widths): interpolating the grid cannot know, timing the count can."""
    calls = []

    def lumpy(module, x):
        calls.append(module)
        if isinstance(module, nn.Linear | nn.Conv2d):
            out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            return layer_macs(module, x) * (1 if out % 4 == 0 else 2)
        return clock(module, x)

    model = net()
    smooth = LatencyModel.fit(model, X, timer=lumpy, exact=False)
    lm = LatencyModel.fit(model, X, timer=lumpy)  # exact by default
    pruned = copy.deepcopy(model)
    pruned[4] = nn.Conv2d(16, 21, 1)  # 21 outputs: off the grid (6, 12, 18, 24), not a multiple
    pruned[8] = nn.Linear(21, 5)
    expected = lumpy(pruned[4], torch.randn(2, 16, 8, 8))
    layers_of = {n: lumpy(pruned[int(n)], x) for n, (_, x) in _inputs(pruned).items()}
    assert layers_of["4"] == pytest.approx(expected)
    grid_guess = smooth._layers(smooth.sizes_of(pruned))[0]
    timed = lm._layers(lm.sizes_of(pruned))[0]
    assert timed == pytest.approx(sum(layers_of.values()))
    assert grid_guess < timed  # interpolation misses the penalty
    before = len(calls)
    lm._layers(lm.sizes_of(pruned))
    assert len(calls) == before  # remembered
    lm.save(tmp_path / "lm.json")
    again = LatencyModel.load(tmp_path / "lm.json")
    assert again.exact and again._layers(again.sizes_of(pruned))[0] == pytest.approx(timed)
    assert len(calls) == before  # the saved model keeps what it timed


def _inputs(model):
    from prunekit.metrics.latency_model import _layer_inputs

    return _layer_inputs(model, (X,))


def test_a_count_off_the_grid_is_timed_against_the_nearest_grid_size():
    """If the machine runs 3x slower when a prediction first times a count off the grid, the
    count is still costed at the speed the grid was fitted at: its time relative to the nearest
    grid size, timed alongside it, scales that size's table entry."""
    speed = 1.0

    def slowing(module, x):
        return clock(module, x) * speed

    model = net()
    pruned = copy.deepcopy(model)
    pruned[4] = nn.Conv2d(16, 21, 1)  # 21 outputs: off the grid (6, 12, 18, 24)
    pruned[8] = nn.Linear(21, 5)
    steady = LatencyModel.fit(model, X, timer=clock)
    expected = steady._layers(steady.sizes_of(pruned))[0]
    lm = LatencyModel.fit(model, X, timer=slowing)  # fitted at speed 1
    speed = 3.0  # then the machine slows down
    assert lm._layers(lm.sizes_of(pruned))[0] == pytest.approx(expected)
