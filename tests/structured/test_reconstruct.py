"""prunekit.reconstruct: least-squares refit of the layers that lost input channels."""

from __future__ import annotations

import copy

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


def _half_copies(producer: nn.Module) -> None:
    """Make the second half of the producer's output channels 0.5x the first half.

    ReLU is positively homogeneous, so after it channel i + n/2 is exactly 0.5x channel i: the
    smaller half carries no information of its own, an l2 criterion removes it, and a least-squares
    refit of the consumer can fold it back exactly (w_i += 0.5 w_(i+n/2)).
    """
    with torch.no_grad():
        half = producer.weight.shape[0] // 2
        producer.weight[half:] = 0.5 * producer.weight[:half]
        if producer.bias is not None:
            producer.bias[half:] = 0.5 * producer.bias[:half]


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    _half_copies(model[0])
    return model


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1, stride=2)
    ).eval()
    _half_copies(model[0])
    return model


def batches(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize(("build", "shape"), [(mlp, (16, 6)), (cnn, (4, 3, 8, 8))])
def test_refit_folds_redundant_channels_back_exactly(build, shape):
    original = build()
    model = copy.deepcopy(original)
    data = batches(shape)
    result = pk.prune(model, data[0], ratio=0.5, importance="l2", ignore=[f"{len(model) - 1}"])
    x = batches(shape, n=1, seed=1)[0]
    assert relative_error(model(x), original(x)) > 0.1  # pruning alone loses the copies

    errors = pk.reconstruct(model, original, result.plan, data, damping=1e-6)

    assert list(errors) == [f"{len(model) - 1}"]  # only the consumer lost inputs
    assert errors[f"{len(model) - 1}"] < 1e-4
    assert relative_error(model(x), original(x)) < 1e-4  # on unseen inputs too


def test_layers_whose_inputs_were_kept_are_left_alone():
    original = mlp()
    model = copy.deepcopy(original)
    data = batches((16, 6))
    result = pk.prune(model, data[0], ratio=0.5, importance="l2", ignore=["2"])
    producer = model[0].weight.clone()
    pk.reconstruct(model, original, result.plan, data)
    assert torch.equal(model[0].weight, producer)


def test_damping_pulls_towards_the_pruned_weights():
    original = mlp()
    data = batches((16, 6))
    model = copy.deepcopy(original)
    result = pk.prune(model, data[0], ratio=0.5, importance="l2", ignore=["2"])
    pruned = model[2].weight.clone()
    pk.reconstruct(model, original, result.plan, data, damping=1e6)
    assert torch.allclose(model[2].weight, pruned, atol=1e-4)


def test_modes_restored_and_original_untouched():
    original = mlp().train()
    reference = copy.deepcopy(original.state_dict())
    model = copy.deepcopy(original)
    data = batches((16, 6))
    result = pk.prune(model, data[0], ratio=0.5, importance="l2", ignore=["2"])
    model.train()
    pk.reconstruct(model, original, result.plan, data)
    assert model.training and original.training
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in reference.items())


def test_bad_arguments_are_explained():
    original = mlp()
    model = copy.deepcopy(original)
    data = batches((16, 6))
    result = pk.prune(model, data[0], ratio=0.5, importance="l2", ignore=["2"])
    with pytest.raises(ValueError, match="needs data"):
        pk.reconstruct(model, original, result.plan, None)
    with pytest.raises(TypeError, match="Plan"):
        pk.reconstruct(model, original, result.plan.to_dict(), data)
    with pytest.raises(ValueError, match="damping"):
        pk.reconstruct(model, original, result.plan, data, damping=0)
    with pytest.raises(ValueError, match="no batches"):
        pk.reconstruct(model, original, result.plan, [])
