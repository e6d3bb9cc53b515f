"""MACs targets count attention's own matmuls (q·kᵀ and the weighted sum of values)."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.models import build_model


def _macs(model, x) -> float:
    return pk.profile(model, x, latency=False, memory=False, size=False).macs


@pytest.mark.parametrize("attention", ["dims", "heads"])
def test_macs_target_is_met_as_measured_on_a_vision_transformer(attention):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    dense = build_model("vit_tiny").eval()
    model = build_model("vit_tiny").eval()
    model.load_state_dict(dense.state_dict())
    result = pk.prune(model, x, target={"macs": 0.5}, attention=attention)
    assert result.verified
    kept = _macs(model, x) / _macs(dense, x)
    # The planner's prediction is the measurement (attention included), and within 2% of 0.5.
    assert kept == pytest.approx(result.report["target"]["predicted_kept"], rel=1e-6)
    assert abs(kept - 0.5) <= 0.01
    heads = [block.attn.num_heads for block in model.blocks]
    head_dims = [
        block.attn.qkv.out_features // (3 * block.attn.num_heads) for block in model.blocks
    ]
    if attention == "heads":  # whole heads go, each keeps its 16 dims
        assert min(heads) < 4 and set(head_dims) == {16}
    else:  # every head stays, with fewer dims
        assert set(heads) == {4} and max(head_dims) < 16
