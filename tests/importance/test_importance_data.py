"""Data-driven criteria: clear errors without data, no side effects, every zoo model with data."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.importance.testing import calibration_batches

DATA_DRIVEN = [n for n in pk.importance.list() if pk.importance.get(n).requires_data]


def test_the_data_driven_criteria_are_registered():
    assert set(DATA_DRIVEN) == {
        "taylor",
        "hessian",
        "activation_mean",
        "apoz",
        "entropy",
        "wanda",
    }
    assert pk.importance.list("act*") == ["activation_mean"]


def small() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return model, torch.randn(2, 4)


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_missing_data_fails_clearly_and_leaves_the_model_alone(name):
    model, x = small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = pk.trace(model, x)
    with pytest.raises(ValueError, match=rf"importance '{name}' is data-driven: pass calibration"):
        pk.importance.get(name).scores(graph, graph.groups)
    with pytest.raises(ValueError, match="data-driven"):
        pk.prune(model, x, ratio=0.5, importance=name)
    assert model[0].out_features == 8
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_unusable_data_fails_clearly(name):
    model, x = small()
    graph = pk.trace(model, x)
    crit = pk.importance.get(name)
    with pytest.raises(ValueError, match="yielded no batches"):
        crit.scores(graph, graph.groups, data=[])
    with pytest.raises(TypeError, match="iterable of \\(inputs, targets\\) batches"):
        crit.scores(graph, graph.groups, data=x)
    with pytest.raises(ValueError, match="\\(inputs, targets\\) pair"):
        crit.scores(graph, graph.groups, data=[(x, x, x)])


def test_gradient_criteria_leave_no_trace_on_the_model():
    model, x = small()
    model.train()
    model[0].weight.requires_grad_(False)
    graph = pk.trace(model, x)
    data = calibration_batches(model, x)
    for name in ("taylor", "hessian"):
        pk.importance.get(name).scores(graph, graph.groups, data=data)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model[0].training
    assert not model[0].weight.requires_grad and model[2].weight.requires_grad


def test_max_batches_bounds_the_calibration():
    model, x = small()
    graph = pk.trace(model, x)
    seen = []

    def batches():
        for batch in calibration_batches(model, x, batches=5):
            seen.append(1)
            yield batch

    pk.importance.get("activation_mean", max_batches=2).scores(graph, graph.groups, data=batches())
    assert len(seen) == 2


@pytest.mark.parametrize("name", pk.importance.list())
def test_scores_are_finite_deterministic_and_per_channel(zoo, name):
    model, x = zoo("residual")
    data = calibration_batches(model, x)
    graph = pk.trace(model, x)
    first = pk.importance.get(name).scores(graph, graph.groups, data=data)
    twin = pk.trace(model, x)
    again = pk.importance.get(name).scores(twin, twin.groups, data=data)
    assert set(first) == {g.key for g in graph.groups}
    for g in graph.groups:
        s = first[g.key]
        assert s.shape == (g.size,) and s.dtype == torch.float64
        assert torch.isfinite(s).all()
        assert torch.equal(s, again[g.key])


class _TakesADict(nn.Module):
    """A model whose one argument is a dict (detection / multi-modal style)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.cls = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.cls(self.enc(batch["image"]).relu().mean((2, 3)))


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_batches_of_dict_inputs_reach_a_model_taking_one_dict(name):
    """Dict inputs go to a model as keyword arguments (Hugging Face) unless its forward does not
    take those keys: then the dict is its argument."""
    gen = torch.Generator().manual_seed(0)
    data = [({"image": torch.randn(4, 3, 8, 8, generator=gen)}, torch.tensor([0, 1, 2, 3]))] * 2
    model = _TakesADict().eval()
    result = pk.prune(model, ({"image": torch.randn(1, 3, 8, 8)},), ratio=0.5, importance=name, data=data)  # fmt: skip
    assert result.verified and model.enc.out_channels == 4
