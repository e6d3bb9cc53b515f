"""Attention variants whose sizes hide in run-time code: ALiBi slopes tiled over the batch
(BLOOM), DeBERTa-v2's relative attention (scale divided into k, head sizes read from tensors in a
helper method beside integer attributes of the same value)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunekit as pk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def _prune(model: nn.Module, inputs, ratio: float = 0.3, **kwargs) -> pk.PruneResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Hugging Face configs that cannot describe head dims
        return pk.prune(model, inputs, ratio=ratio, **kwargs)


# ------------------------------------------------------------------------------ ALiBi
class _Alibi(nn.Module):
    """BLOOM's attention in small: per-head slopes, made from literals (BLOOM) or learned, times
    the key position, tiled over the batch (`repeat(batch, 1, 1)`) and added to the
    (batch x heads) scores by `baddbmm`."""

    def __init__(self, dim: int = 24, heads: int = 3, learned: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.slopes = nn.Parameter(torch.rand(heads)) if learned else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = (t.reshape(b * self.heads, n, self.head_dim) for t in qkv.unbind(0))
        slopes = self.slopes if self.slopes is not None else 2.0 ** -torch.arange(1, 4)
        alibi = (slopes[:, None, None] * torch.arange(n)).repeat(b, 1, 1)  # [b * heads, 1, n]
        scores = alibi.baddbmm(q, k.transpose(1, 2), alpha=self.head_dim**-0.5)
        out = torch.bmm(scores.softmax(-1), v).view(b, self.heads, n, self.head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


def test_slopes_made_from_literals_keep_the_heads_whole() -> None:
    """The tiled slopes are joined with the heads of the scores: slopes computed from the head
    count cannot lose a head, so the heads are no group (a fresh space for the tiled tensor
    let them be pruned, and the model failed with a size mismatch)."""
    torch.manual_seed(0)
    model, x = _Alibi().eval(), torch.randn(2, 5, 24)
    graph = pk.trace(model, x)
    assert not [g for g in graph.groups if g.size == model.heads]
    assert "created from literals" in graph.summary()


def test_learned_slopes_are_pruned_with_their_heads() -> None:
    """Slopes that are parameters follow the heads: a removed head takes its slope along."""
    torch.manual_seed(0)
    model, x = _Alibi(learned=True).eval(), torch.randn(2, 5, 24)
    result = _prune(model, x, ratio=0.5, attention="heads")
    assert result.verified and result.model is model
    assert model.heads == 2 and model.slopes.shape == (2,)
    assert model(torch.randn(3, 7, 24)).shape == (3, 7, 24)


def test_bloom_heads_mode_keeps_the_alibi_heads() -> None:
    """BLOOM computes its ALiBi slopes from `num_heads` at run time: removing a head would change
    every slope, so no head is removed; never a VerificationError."""
    torch.manual_seed(0)
    config = transformers.BloomConfig(vocab_size=100, hidden_size=64, n_layer=2, n_head=4)
    model = transformers.BloomModel(config).eval()
    ids = torch.randint(1, 100, (1, 16))
    result = _prune(model, (ids,), attention="heads", example_kwargs={"use_cache": False})
    assert result.verified and result.model is model
    assert model.num_heads == 4
    assert all(layer.self_attention.num_heads == 4 for layer in model.h)
    assert model.config.n_head == 4
    assert all(len(g.keep) == g.size for g in result.plan.groups if g.size == 4)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :2] = 0
    with torch.no_grad():  # other batch sizes, with and without padding
        for kwargs in ({}, {"attention_mask": mask}):
            out = model(torch.randint(1, 100, (3, 9)), use_cache=False, **kwargs)
            assert out.last_hidden_state.shape == (3, 9, 64)


# --------------------------------------------------------------------------- DeBERTa-v2
def _deberta_v2(buckets: int, max_relative: int) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.DebertaV2Config(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, relative_attention=True,
        pos_att_type=["p2c", "c2p"], position_buckets=buckets, max_relative_positions=max_relative,
        share_att_key=True, norm_rel_ebd="layer_norm",
    )  # fmt: skip
    return transformers.DebertaV2Model(config).eval()


@pytest.mark.parametrize(("buckets", "max_relative"), [(16, 64), (32, 128)])
def test_deberta_v2_relative_attention_prunes_head_dims_eagerly(buckets, max_relative) -> None:
    """DeBERTa-v2 divides k by sqrt(d * 3), d read from q at run time: the fold on q's rows
    keeps the temperature. Its head sizes are read from tensors (`x.size(-1)`, `-1`) in a
    helper method, so `position_buckets == head_dim == 16` stays (and so do the sizes derived
    from it), as does `max_relative_positions == hidden_size == 64`."""
    model, ids = _deberta_v2(buckets, max_relative), torch.randint(1, 100, (1, 16))
    result = _prune(model, (ids,))
    assert result.verified and result.model is model
    assert result.report["temperature_folds"] >= 1
    for layer in model.encoder.layer:
        attention = layer.attention.self
        assert attention.query_proj.out_features == 48  # 4 heads x 12 head dims
        assert (attention.position_buckets, attention.pos_ebd_size) == (buckets, buckets)
        assert attention.max_relative_positions == max_relative
    assert (model.encoder.position_buckets, model.encoder.max_relative_positions) == (
        buckets,
        max_relative,
    )
    assert (model.config.position_buckets, model.config.max_relative_positions) == (
        buckets,
        max_relative,
    )
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, -3:] = 0
    with torch.no_grad():
        out = model(torch.randint(1, 100, (3, 11)), attention_mask=mask)
    assert out.last_hidden_state.shape == (3, 11, 64)


# ------------------------------------------------------------------- sizes in helpers
class _HelperShapes(nn.Module):
    """Head sizes written in a helper method, read from the tensor (`x.size()[:-1] + (heads,
    -1)`, `x.size(-1)`), beside an attribute of the head size's value (`window`) that must not
    change: torch.export's stack traces name only `forward`, so the helper is read too."""

    def __init__(self, dim: int = 32, heads: int = 4, window: int = 8) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.size()[:-1] + (self.heads, -1)
        x = x.view(shape).transpose(1, 2)
        return x.reshape(-1, x.size(2), x.size(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
        out = torch.bmm(torch.bmm(q, k.transpose(1, 2)).softmax(-1), v)
        out = out.view(b, self.heads, n, -1).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out[:, : self.window])


@pytest.mark.parametrize("capture", ["record", "export"])
def test_sizes_read_from_tensors_in_a_helper_leave_equal_attributes(capture) -> None:
    torch.manual_seed(0)
    model, x = _HelperShapes().eval(), torch.randn(2, 12, 32)
    graph = pk.trace(model, x, capture=capture)
    plan = pk.plan(model, x, ratio=0.25, graph=graph)
    result = pk.apply(model, plan, x, verify=True, graph=graph)
    assert result.verified and result.model is model
    assert model.qkv.out_features == 72 and (model.heads, model.window) == (4, 8)
