import pytest
import torch
from torch import nn

import prunekit as pk


def test_sequential_cnn_groups(zoo):
    model, x = zoo("seq_cnn")
    g = pk.trace(model, x)
    sizes = sorted(grp.size for grp in g.groups)
    # three conv widths and the hidden linear; the input channels and the classes are I/O
    assert sizes == [8, 16, 16, 32]
    assert not g.blocked_ops


def test_residual_add_couples_both_branches(zoo):
    model, x = zoo("residual")
    g = pk.trace(model, x)
    stem = next(grp for grp in g.groups if any(m.name == "stem.weight" for m in grp.members))
    names = {m.name for m in stem.members}
    assert {"stem.weight", "a.3.weight", "a.4.weight", "b.2.weight", "head.weight"} <= names


def test_unknown_op_blocks_and_is_named(zoo):
    model, x = zoo("recurrent")
    g = pk.trace(model, x)
    assert [b.op for b in g.blocked_ops] == ["aten.cumsum.default"]
    assert "aten.cumsum.default" in g.summary()
    # the hidden layer before the cumsum is still prunable; the cumsum's channels are not
    assert [grp.size for grp in g.groups] == [16]
    assert g.groups[0].members[0].name == "a.weight"


def test_tied_embedding_keeps_vocabulary(zoo):
    model, x = zoo("tied_lm")
    g = pk.trace(model, x)
    for grp in g.groups:
        assert all(not (m.name == "emb.weight" and m.dim == 0) for m in grp.members)
    hidden = next(grp for grp in g.groups if any(m.name == "emb.weight" for m in grp.members))
    assert hidden.size == 16


def test_attention_has_head_and_head_dim_groups(zoo):
    model, x = zoo("attention")
    g = pk.trace(model, x)
    qkv_groups = sorted(grp.size for grp in g.groups if "qkv" in " ".join(grp.modules))
    assert 4 in qkv_groups and 8 in qkv_groups  # heads and head dims


def test_trace_does_not_change_the_model(zoo):
    model, x = zoo("seq_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    pk.trace(model, x)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_inputs_give_clear_errors():
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="example_inputs"):
        pk.trace(model, torch.randn(3, 5))
    with pytest.raises(TypeError, match="nn.Module"):
        pk.trace("not a model", torch.randn(1, 4))
    with pytest.raises(TypeError, match=r"wrapped in DataParallel; pass .*model.module"):
        pk.prune(nn.DataParallel(model), torch.randn(1, 4), ratio=0.5)
    with torch.device("meta"):
        ghost = nn.Linear(4, 2)
    for call in (lambda: pk.prune(ghost, torch.randn(1, 4), ratio=0.5), lambda: pk.profile(ghost, torch.randn(1, 4))):  # fmt: skip
        with pytest.raises(ValueError, match="meta device.*to_empty"):
            call()


class _BranchesOnValues(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.sum() > 0:  # data-dependent control flow
            h = h.relu()
        return self.b(h)


def test_data_dependent_branches_are_named_in_one_quiet_error(capfd):
    with pytest.raises(ValueError, match=r"branches on the values of a tensor at test_graph_trace"):
        pk.trace(_BranchesOnValues(), torch.randn(1, 4))
    assert capfd.readouterr().err == ""  # torch printed its partial graph here


class _DetectorLike(nn.Module):
    """A feature extractor named `backbone`, then a value-dependent step (a detector's NMS)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.backbone(x).flatten(1).mean(1)
        if scores.max() > 0.5:  # post-processing that depends on the scores
            scores = scores.sigmoid()
        return scores


def test_a_data_dependent_model_is_pointed_at_its_backbone():
    """The error names where the branch is and the submodule that can be pruned instead."""
    from prunekit.graph.capture import _call_site

    with pytest.raises(ValueError, match=r"branches on the values.*\(e\.g\. model\.backbone\)"):
        pk.trace(_DetectorLike(), torch.randn(2, 3, 8, 8))
    caused = RuntimeError(
        "Could not guard ...\nCaused by: (torchvision/ops/boxes.py:86 in batched_nms)"
    )
    assert _call_site(caused) == " at boxes.py:86 (batched_nms)"


def test_lstm_blocks_and_neighbours_still_prune(zoo):
    model, x = zoo("lstm")
    g = pk.trace(model, x)
    assert any("lstm" in b.op for b in g.blocked_ops)
    assert [grp.size for grp in g.groups] == [20]  # only mid -> out stays prunable


def test_grouped_and_depthwise_convs_keep_groups_consistent(zoo):
    model, x = zoo("grouped")
    result = pk.prune(model, x, ratio=0.5)
    assert result.verified
    assert model.grouped.groups == 4 and model.grouped.in_channels % 4 == 0
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels
    assert model.gn.num_channels % model.gn.num_groups == 0


def test_torch_multihead_attention_prunes_eagerly(zoo):
    model, x = zoo("torch_mha")
    result = pk.prune(model, x, ratio=0.5)
    assert result.model is model and "fallback" not in result.report
    attn = model.layer.self_attn
    assert attn.embed_dim == 16 and attn.num_heads == 4 and attn.head_dim == 4


def test_summary_counts_parameters_not_buffers(zoo):
    model, x = zoo("seq_cnn")  # BatchNorm running statistics are buffers, not parameters
    g = pk.trace(model, x)
    total = sum(p.numel() for p in model.parameters())
    assert g.to_dict()["total_params"] == total and f"of {total:,} parameters" in g.summary()
