"""Scopes: hand-computed LAMP, ERK, std and global allocations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.unstructured import erk_densities, sparsify
from prunekit.unstructured._scopes import apportion


def layers(*rows) -> nn.Sequential:
    seq = nn.Sequential(*(nn.Linear(len(r), 1, bias=False) for r in rows))
    with torch.no_grad():
        for module, r in zip(seq, rows):
            module.weight.copy_(torch.tensor([r]))
    return seq


def pruned_per_layer(model: nn.Module) -> list[int]:
    return [int((m.weight == 0).sum()) for m in model]


def test_lamp_is_scale_invariant_where_global_is_not():
    # LAMP of u^2 = [1, 4, 9, 16]: [1/30, 4/29, 9/25, 1], identical for the x10 layer
    model = layers([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    sparsify(model, 0.5, scope="lamp")
    assert pruned_per_layer(model) == [2, 2]
    assert model[0].weight.tolist() == [[0.0, 0.0, 3.0, 4.0]]
    model = layers([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    with pytest.warns(UserWarning, match=r"pruned every weight of 1 layer\(s\) \(0.weight\)"):
        sparsify(model, 0.5, scope="global")
    assert pruned_per_layer(model) == [4, 0]


def test_lamp_hand_computed_order():
    # layer A: [1, 3] -> LAMP [1/10, 1]; layer B: [2, 2.5, 10] -> u^2 [4, 6.25, 100]:
    # [4/110.25, 6.25/106.25, 1] = [0.036, 0.059, 1]. The 2 lowest overall: B's 2 and 2.5,
    # although A's 1 has the smallest magnitude.
    model = layers([1.0, 3.0], [2.0, 2.5, 10.0])
    sparsify(model, 0.4, scope="lamp")
    assert model[0].weight.tolist() == [[1.0, 3.0]]
    assert model[1].weight.tolist() == [[0.0, 0.0, 10.0]]


def test_erk_densities_hand_computed():
    shapes = [(10, 10), (100, 10)]  # raw 20/100 = 0.2 and 110/1000 = 0.11
    d = erk_densities(shapes, 0.9)  # eps = 110 / (0.2 * 100 + 0.11 * 1000) = 110 / 130
    assert d == pytest.approx([0.2 * 110 / 130, 0.11 * 110 / 130])
    d = erk_densities(shapes, 0.1)  # eps * 0.2 > 1: the small layer is dense, 890 left for 1000
    assert d == pytest.approx([1.0, 0.89])
    assert erk_densities(shapes, 0.0) == [1.0, 1.0]


def test_erk_scope_follows_the_densities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(10, 100, bias=False))
    report = sparsify(model, 0.9, scope="erk")
    assert [layer.nonzeros for layer in report.layers] == [17, 93]  # 16.92 and 93.08 apportioned


def test_std_threshold_is_quality_times_each_layer_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 20), nn.Linear(20, 10))
    with torch.no_grad():
        model[1].weight.mul_(5)  # a layer with much larger weights
    stds = [m.weight.detach().std() for m in model]
    sparsify(model, 0.7, scope="std")
    pruned_max, kept_min = 0.0, float("inf")
    for m, std in zip(model, stds):
        z = m.weight.detach().abs() / std
        kept = m.weight_mask
        if (~kept).any():
            pruned_max = max(pruned_max, float(z[~kept].max()))
        kept_min = min(kept_min, float(z[kept].min()))
    assert pruned_max <= kept_min  # one quality parameter q separates pruned from kept
    assert 0 < float((model[1].weight == 0).float().mean()) < 0.9  # unlike a global threshold


def test_apportion_hits_the_total_and_the_caps():
    assert apportion([1.5, 1.5, 1.0], [3, 3, 3], 4) == [2, 1, 1]
    assert apportion([2.9, 0.1], [2, 5], 3) == [2, 1]
    assert sum(apportion([0.3] * 7, [1] * 7, 2)) == 2
