"""target={"accuracy_drop": d}: prune as far as the measured accuracy allows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def half_dead_mlp() -> nn.Sequential:
    """16 hidden units of which 12 are dead (zero in and out): 75% can go at no accuracy cost."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[0].weight[4:] = 0
        model[0].bias[4:] = 0
        model[2].weight[:, 4:] = 0
    return model


def own_targets(model: nn.Module, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(64, 8, generator=g) for _ in range(n)]
    with torch.no_grad():
        return [(x, model(x).argmax(1)) for x in xs]


def test_zero_drop_removes_exactly_the_dead_channels():
    model = half_dead_mlp()
    data = own_targets(model)
    result = pk.prune(model, torch.zeros(1, 8), target={"accuracy_drop": 0.0}, data=data)
    info = result.report["target"]
    assert info["accuracy"] == info["baseline_accuracy"] == 1.0
    assert model[0].out_features < 16  # it did prune ...
    assert model[0].out_features >= 4  # ... but never a live unit: accuracy is still 100%
    assert pk.train.evaluate(model, data)["accuracy"] == 1.0
    assert all(r["drop"] <= 0.0 or r["macs_kept"] < info["macs_kept"] for r in info["rounds"])


def test_a_looser_bound_prunes_at_least_as_far():
    data = own_targets(half_dead_mlp())
    tight = pk.plan(half_dead_mlp(), torch.zeros(1, 8), target={"accuracy_drop": 0.0}, data=data)
    loose = pk.plan(half_dead_mlp(), torch.zeros(1, 8), target={"accuracy_drop": 30.0}, data=data)
    assert loose.meta["target"]["macs_kept"] <= tight.meta["target"]["macs_kept"]


def test_accuracy_target_needs_data_and_a_sane_bound():
    model = half_dead_mlp()
    with pytest.raises(ValueError, match="data="):
        pk.plan(model, torch.zeros(1, 8), target={"accuracy_drop": 0.5})
    with pytest.raises(ValueError, match="percentage points"):
        pk.plan(model, torch.zeros(1, 8), target={"accuracy_drop": -1}, data=own_targets(model))
    with pytest.raises(ValueError, match="steps=1"):
        pk.prune(model, torch.zeros(1, 8), target={"accuracy_drop": 0.5}, steps=2, data=[])
