"""prunekit.models: the DS-CNN keyword spotter builds, trains a step and prunes structurally."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.models as pkm

X = (1, 1, 40, 101)


def _model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return pkm.build_model("kws_dscnn", **kwargs)


def test_builds_with_its_input_shape_and_runs() -> None:
    model = _model()
    assert pkm.spec_of(model) == "prunekit:kws_dscnn"
    assert pkm.input_shape("kws_dscnn") == X
    assert 20_000 <= sum(p.numel() for p in model.parameters()) <= 50_000
    out = model(torch.randn(3, *X[1:]))
    assert out.shape == (3, 12)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 4 and all(m.groups == m.in_channels == 64 for m in depthwise)
    small = _model(num_classes=5, width=16, blocks=2)
    assert small(torch.randn(2, *X[1:])).shape == (2, 5)
    with pytest.raises(ValueError, match="width"):
        pkm.build_model("kws_dscnn", width=0)


def test_prunes_half_the_channels_verified() -> None:
    model = _model().eval()
    x = torch.randn(*X)
    before = sum(p.numel() for p in model.parameters())
    result = pk.prune(model, x, ratio=0.5, importance="l2", verify=True)
    assert result.verified and result.max_error <= 1e-4
    # Every conv keeps 32 of 64 channels: pointwise weights shrink 4x, the others 2x.
    after = sum(p.numel() for p in result.model.parameters())
    assert 0.25 * before < after < 0.4 * before
    pointwise = [m for n, m in result.model.named_modules() if n.endswith("pointwise.0")]
    assert [tuple(m.weight.shape[:2]) for m in pointwise] == [(32, 32)] * 4
    # Depthwise convs stay depthwise at their new widths, and the classifier keeps 12 outputs.
    for m in result.model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels == 32
    assert result.model(torch.randn(2, *X[1:])).shape == (2, 12)
