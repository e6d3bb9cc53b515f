"""prunekit.train.regularizers: bn_l1 (network slimming) and group_lasso over dependency groups."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.data import TensorBatches
from prunekit.train import bn_l1, fit, group_lasso


def conv_bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def with_scales(model: nn.Module) -> nn.Module:
    """Give every norm scale distinct values of both signs (default ones hide abs errors)."""
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "weight", None) is not None and not isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.linspace(-1.5, 2.0, m.weight.numel()).view_as(m.weight))
    return model


def test_bn_l1_is_weight_times_sum_of_abs_scales() -> None:
    model = with_scales(conv_bn_net())
    gamma = model[1].weight
    torch.testing.assert_close(bn_l1(0.1)(model), 0.1 * gamma.abs().sum())
    assert bn_l1(0.1)(model).item() == pytest.approx(0.1 * sum(abs(v) for v in gamma.tolist()))


def test_bn_l1_covers_norm_kinds_and_filters_by_name() -> None:
    model = nn.Sequential(
        nn.BatchNorm1d(3),
        nn.GroupNorm(2, 4),
        nn.InstanceNorm1d(5, affine=True),
        nn.LayerNorm(6),
        nn.InstanceNorm1d(7),  # no affine weights: not counted
        nn.LayerNorm(8, elementwise_affine=False),
        nn.Linear(4, 4),
    )
    with_scales(model)
    scales = [model[i].weight for i in range(4)]
    expected = sum(s.abs().sum() for s in scales)
    torch.testing.assert_close(bn_l1(2.0)(model), 2.0 * expected)
    only = bn_l1(1.0, modules=["1", "3"])(model)
    torch.testing.assert_close(only, scales[1].abs().sum() + scales[3].abs().sum())
    with pytest.raises(ValueError, match="no norm layer"):
        bn_l1(1.0, modules=["head.*"])(model)
    with pytest.raises(ValueError, match=">= 0"):
        bn_l1(-1.0)


def test_bn_l1_gradient_is_weight_times_sign() -> None:
    model = with_scales(conv_bn_net())
    bn_l1(0.5)(model).backward()
    torch.testing.assert_close(model[1].weight.grad, 0.5 * model[1].weight.sign())
    assert model[0].weight.grad is None


def test_group_lasso_matches_hand_formula() -> None:
    model = conv_bn_net()
    with torch.no_grad():
        model[1].weight.normal_()
        model[1].bias.normal_()
    graph = pk.trace(model, torch.randn(1, 3, 5, 5))
    assert len(graph.groups) == 1  # the 4 channels between the two convs
    conv, bn, out = model[0], model[1], model[3]
    per_channel = (
        conv.weight.square().sum((1, 2, 3))
        + conv.bias.square()
        + bn.weight.square()
        + bn.bias.square()
        + out.weight.square().sum((0, 2, 3))
    )
    expected = 0.3 * per_channel.sqrt().sum()
    torch.testing.assert_close(group_lasso(graph, 0.3)(model), expected)


def head_parts(model: nn.Module, heads: int = 4, head_dim: int = 8) -> list[torch.Tensor]:
    """The attention zoo model's qkv rows / bias and proj columns as (.., heads, head_dim, ..)."""
    return [
        model.qkv.weight.view(3, heads, head_dim, -1),
        model.qkv.bias.view(3, heads, head_dim),
        model.proj.weight.view(-1, heads, head_dim),
    ]


def test_group_lasso_maps_attention_heads_and_head_dims(zoo) -> None:
    model, x = zoo("attention")
    graph = pk.trace(model, x)
    by_size = {g.size: g for g in graph.groups if g.key.startswith("qkv.weight")}
    heads, dims = by_size[4], by_size[8]
    for g in (heads, dims):
        assert {(m.name, m.dim) for m in g.members} == {
            ("qkv.weight", 0),
            ("qkv.bias", 0),
            ("proj.weight", 1),
        }
    w, b, p = head_parts(model)
    per_head = w.square().sum((0, 2, 3)) + b.square().sum((0, 2)) + p.square().sum((0, 2))
    per_dim = w.square().sum((0, 1, 3)) + b.square().sum((0, 1)) + p.square().sum((0, 1))
    for g, per_channel in ((heads, per_head), (dims, per_dim)):
        one = dataclasses.replace(graph, groups=[g])
        value = group_lasso(one, 1.0)(model)
        torch.testing.assert_close(value, per_channel.sqrt().sum())


def test_group_lasso_gradients_flow_to_the_current_parameters(zoo) -> None:
    model, x = zoo("residual")
    graph = pk.trace(model, x)
    trained = copy.deepcopy(model)  # e.g. the model being fine-tuned, not the traced one
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1 * torch.randn_like(p))  # (zero-initialised biases have zero gradient)
        trained.a[0].weight[0].zero_()  # an all-zero slice: gradient 0 there, not NaN
        trained.a[0].bias[0] = 0.0
        trained.a[1].weight[0] = 0.0
        trained.a[1].bias[0] = 0.0
        trained.a[3].weight[:, 0] = 0.0
    value = group_lasso(graph, 0.1)(trained)
    assert value.dtype == torch.float32 and value.requires_grad
    assert value.item() != pytest.approx(group_lasso(graph, 0.1)(model).item())
    value.backward()
    assert all(p.grad is None for p in model.parameters())
    coupled = {m.name for g in graph.groups for m in g.members if m.kind == "parameter"}
    for name, p in trained.named_parameters():
        if name in coupled:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    assert trained.a[0].weight.grad[0].abs().sum() == 0


def test_group_lasso_refuses_a_model_pruned_since_tracing(zoo) -> None:
    model, x = zoo("seq_cnn")
    reg = group_lasso(pk.trace(model, x), 1e-3)
    pk.prune(model, x, ratio=0.5)
    with pytest.raises(ValueError, match="trace the model again"):
        reg(model)


def tiny_bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def scales_l1(model: nn.Module) -> float:
    return model[1].weight.abs().sum().item()


def test_fit_with_bn_l1_shrinks_the_scales() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=g)
    data = TensorBatches(x, x[:, :3].argmax(1), 16, shuffle=True, seed=0)
    runs = {}
    for weight in (0.0, 0.05):
        model = tiny_bn_model()
        regs = [bn_l1(weight)] if weight else []
        fit(model, data, epochs=2, lr=0.05, schedule="constant", regularizers=regs, progress=False)
        runs[weight] = scales_l1(model)
    assert runs[0.05] < 0.8 * runs[0.0]
