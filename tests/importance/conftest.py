"""Tiny models with set weights, for criteria checked against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk


def set_weights(module: nn.Module, weight, bias=None) -> nn.Module:
    with torch.no_grad():
        w = torch.as_tensor(weight, dtype=torch.float32)
        module.weight.copy_(w.reshape(module.weight.shape))
        if module.bias is not None:
            module.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return module


@pytest.fixture
def mlp():
    """`mlp() -> (model, x, y)`: fc1 (2 -> 3) -> ReLU -> fc2 (3 -> 2) and two samples.

    One prunable group, the 3 hidden channels; channel c owns fc1.weight[c], fc1.bias[c] and
    fc2.weight[:, c]:  v0 = (1, 0 | 0 | 1, 2),  v1 = (0, 2 | 0 | 1, 0),  v2 = (-1, 1 | 1 | 0, -1).
    Inputs (1, 2) and (3, -1): hidden pre-activations (1, 4, 2) and (3, -2, -3), so the ReLU
    outputs are (1, 4, 2) and (3, 0, 0).
    """

    def build():
        model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
        set_weights(model[0], [[1, 0], [0, 2], [-1, 1]], [0, 0, 1])
        set_weights(model[2], [[1, 1, 0], [2, 0, -1]], [0, 0])
        x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
        return model.eval(), x, torch.tensor([0, 1])

    return build


@pytest.fixture
def scores():
    """`scores(model, x, name, data=None, **criterion_kwargs)`: the scores of the only group."""

    def run(model, x, name, data=None, **kwargs) -> torch.Tensor:
        graph = pk.trace(model, x)
        (group,) = graph.groups
        out = pk.importance.get(name, **kwargs).scores(graph, graph.groups, data=data)
        assert out[group.key].dtype == torch.float64
        return out[group.key]

    return run


@pytest.fixture
def check():
    def run(actual: torch.Tensor, expected) -> None:
        torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64))

    return run


@pytest.fixture
def set_weights_fn():
    return set_weights
