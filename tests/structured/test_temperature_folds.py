"""The attention temperature is kept where head dims shrink, whatever carries q: a split of
nn.MultiheadAttention's packed weight, an einsum, a norm over the head dim (QK-norm)."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.structured import VerificationError
from prunekit.structured.surgery import keep_masks
from prunekit.structured.temperature import find_folds

TOLERANCE = 1e-4


def _prune_eagerly(model: nn.Module, inputs, **kwargs):
    """`pk.prune` at ratio 0.5 that fails on any warning (the exported-graph fallback warns):
    the user's own module must come back, verified against the masked original."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pk.prune(model, inputs, ratio=0.5, **kwargs)
    assert result.verified and result.model is model
    assert result.max_error <= TOLERANCE
    assert result.report["temperature_folds"] >= 1
    return result


def _folds(model: nn.Module, inputs):
    graph = pk.trace(model, inputs)
    return find_folds(graph, keep_masks(graph, pk.plan(model, inputs, ratio=0.5, graph=graph)))


# ---------------------------------------------------------------- nn.MultiheadAttention
class _SelfMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 32)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        h = self.a(x)
        return self.fc((h + self.mha(h, h, h, need_weights=False)[0]).mean(1))


class _CrossMHA(nn.Module):
    """Query from x, key and value from y (kdim = vdim = `kdim`, packed weights if 32)."""

    def __init__(self, kdim: int = 32) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(8, kdim)
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True, kdim=kdim, vdim=kdim)
        self.fc = nn.Linear(32, 3)

    def forward(self, x, y):
        q, kv = self.a(x), self.b(y)
        return self.fc((q + self.mha(q, kv, kv, need_weights=False)[0]).mean(1))


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.src, self.tgt = nn.Linear(8, 32), nn.Linear(8, 32)
        self.dec = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x, y):
        return self.fc(self.dec(self.tgt(x), self.src(y)).mean(1))


def _xy():
    return torch.randn(2, 5, 8), torch.randn(2, 7, 8)


def test_self_attention_mha_keeps_the_temperature():
    torch.manual_seed(0)
    model, x = _SelfMHA().eval(), _xy()[:1]
    _prune_eagerly(model, x)
    assert model.mha.head_dim == 4 and model.mha.num_heads == 4
    assert model(*x).shape == (2, 3)


def test_cross_attention_mha_folds_into_the_split_of_the_packed_weight():
    torch.manual_seed(0)
    model, xy = _CrossMHA().eval(), _xy()
    folds = _folds(model, xy)
    assert [(f.weight, f.bias, f.rows) for f in folds] == [
        ("mha.in_proj_weight", "mha.in_proj_bias", list(range(32)))  # q's rows only
    ]
    _prune_eagerly(model, xy)
    assert model.mha.head_dim == 4
    assert model(*xy).shape == (2, 3)


def test_kdim_mha_scales_the_q_slice_of_the_packed_bias():
    torch.manual_seed(0)
    model, xy = _CrossMHA(kdim=16).eval(), _xy()
    folds = _folds(model, xy)
    assert [(f.weight, f.bias, f.rows) for f in folds] == [
        ("mha.q_proj_weight", "mha.in_proj_bias", list(range(32)))
    ]
    _prune_eagerly(model, xy)
    assert model.mha.head_dim == 4 and model(*xy).shape == (2, 3)


def test_transformer_decoder_layer_keeps_the_temperature_of_both_attentions():
    torch.manual_seed(0)
    model, xy = _Decoder().eval(), _xy()
    assert len({f.module for f in _folds(model, xy)}) == 2  # self- and cross-attention
    _prune_eagerly(model, xy)
    assert model.dec.self_attn.head_dim == 4 and model.dec.multihead_attn.head_dim == 4
    assert model(*xy).shape == (2, 3)


# ---------------------------------------------------------------- einsum
class _EinsumAttention(nn.Module):
    """Scores by einsum, scaled after (`/ math.sqrt(dh)`) or q scaled before (`q * dh**-0.5`)."""

    def __init__(self, scale_first: bool, layout: str = "bhqd,bhkd->bhqk") -> None:
        super().__init__()
        self.scale_first, self.layout, self.h, self.dh = scale_first, layout, 4, 8
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, self.h, self.dh) for p in (self.q, self.k, self.v))
        if self.layout.startswith("bhqd"):
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        if self.scale_first:
            att = torch.einsum(self.layout, q * self.dh**-0.5, k)
        else:
            att = torch.einsum(self.layout, q, k) / math.sqrt(self.dh)
        y = (att.softmax(-1) @ v.transpose(1, 2)).transpose(1, 2).reshape(B, T, -1)
        return x + self.o(y)


@pytest.mark.parametrize(
    "scale_first, layout",
    [(False, "bhqd,bhkd->bhqk"), (True, "bhqd,bhkd->bhqk"), (False, "bqhd,bkhd->bhqk")],
    ids=["divide-after", "multiply-before", "heads-second"],
)
def test_einsum_scores_keep_the_temperature(scale_first, layout):
    torch.manual_seed(0)
    model, x = _EinsumAttention(scale_first, layout).eval(), torch.randn(2, 6, 32)
    _prune_eagerly(model, x)
    assert model.dh == 4 and model.q.out_features == 16
    assert model(x).shape == (2, 6, 32)


def test_einsum_with_planted_dead_head_dims_computes_the_original_function():
    """Independent of verification: half of each head's dims are dead in q, k, v and o, so the
    original model already computes the pruned function, at the original temperature."""
    torch.manual_seed(0)
    model, x = _EinsumAttention(False).eval(), torch.randn(2, 6, 32)
    dead = torch.tensor([h * 8 + d for h in range(4) for d in range(4, 8)])
    with torch.no_grad():
        for p in (model.q, model.k, model.v):
            p.weight[dead] = 0
            p.bias[dead] = 0
        model.o.weight[:, dead] = 0
        expected = model(x)
    _prune_eagerly(model, x, ignore=["o"])  # the residual width stays
    assert model.dh == 4
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- QK-norm
class _WrittenRMSNorm(nn.Module):
    """An RMSNorm written out, as Hugging Face's classes are (`weight * x.to(dtype)`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.weight * x.to(dtype)


NORMS = {
    "rmsnorm": lambda d: nn.RMSNorm(d),
    "layernorm": lambda d: nn.LayerNorm(d),
    "written-rmsnorm": _WrittenRMSNorm,
    "none": lambda d: nn.Identity(),
    "weightless": lambda d: lambda x: F.rms_norm(x, (x.shape[-1],)),
}


class _QKNormAttention(nn.Module):
    """Qwen3 / OLMo2 / timm qk_norm style: a norm over head_dim on q and k after the projection."""

    def __init__(self, q_norm: str, k_norm: str, layout: str = "fused") -> None:
        super().__init__()
        self.h, self.dh, self.layout = 4, 8, layout
        self.qkv = nn.Linear(32, 96)
        self.o = nn.Linear(32, 32, bias=False)
        self.q_norm, self.k_norm = NORMS[q_norm](self.dh), NORMS[k_norm](self.dh)
        if layout == "own-bias":
            self.biases = nn.ParameterList(torch.randn(32) for _ in range(3))

    def forward(self, x):
        B, T, _ = x.shape
        if self.layout == "fused":
            q, k, v = self.qkv(x).view(B, T, 3, self.h, self.dh).unbind(2)
        else:  # each projection a slice of the fused weight (k's rows start at 32)
            w, n = self.qkv.weight, self.qkv.out_features // 3
            b = self.qkv.bias.chunk(3) if self.layout == "sliced" else list(self.biases)
            q, k, v = (
                F.linear(x, w[i * n : (i + 1) * n], b[i]).view(B, T, self.h, self.dh)
                for i in range(3)
            )
        q, k = self.q_norm(q).transpose(1, 2), self.k_norm(k).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))
        return x + self.o(a.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm", "written-rmsnorm"])
def test_qk_norm_folds_into_the_q_norm(norm):
    torch.manual_seed(0)
    model, x = _QKNormAttention(norm, norm).eval(), torch.randn(2, 6, 32)
    folds = _folds(model, x)
    assert [f.weight for f in folds] == ["q_norm.weight"]
    assert folds[0].bias == ("q_norm.bias" if norm == "layernorm" else None)
    _prune_eagerly(model, x)
    assert model.q_norm.weight.shape == (4,) and model(x).shape == (2, 6, 32)


@pytest.mark.parametrize(
    "k_norm, layout",
    [("rmsnorm", "fused"), ("none", "fused"), ("none", "sliced"), ("none", "own-bias")],
)
def test_a_q_norm_without_weight_leaves_the_factor_to_k(k_norm, layout):
    """The scores are bilinear in q and k: with no weight after q's norm (a factor before it
    would be normalised away), k's norm or projection takes the factor."""
    torch.manual_seed(0)
    model, x = _QKNormAttention("weightless", k_norm, layout).eval(), torch.randn(2, 6, 32)
    folds = [(f.weight, f.bias, f.rows) for f in _folds(model, x)]
    if k_norm == "rmsnorm":
        assert folds == [("k_norm.weight", None, list(range(8)))]
    elif layout == "own-bias":  # rows 32... of the weight, all of k's own bias
        assert folds == [
            ("qkv.weight", None, list(range(32, 64))),
            ("biases.1", None, list(range(32))),
        ]
    else:  # k's rows of the fused projection (sliced: a slice and a chunk, each at its offset)
        assert folds == [("qkv.weight", "qkv.bias", list(range(32, 64)))]
    _prune_eagerly(model, x)
    assert model.qkv.out_features == 48 and model(x).shape == (2, 6, 32)


def test_no_weight_after_either_norm_fails_verification_and_restores_the_model():
    """Weightless norms on q and k leave no parameter for the factor (one before a norm is
    normalised away), so the eager model cannot keep the temperature: never a silently wrong
    model, the user's is left as it was."""
    torch.manual_seed(0)
    model, x = _QKNormAttention("weightless", "weightless").eval(), torch.randn(2, 6, 32)
    assert _folds(model, x) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VerificationError):
            pk.prune(model, x, ratio=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.qkv.out_features == 96 and model.dh == 8


def test_timm_vit_with_qk_norm_keeps_the_temperature():
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    model = vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=4, qk_norm=True,
        num_classes=3,
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 16, 16)
    _prune_eagerly(model, x)
    assert model.blocks[0].attn.head_dim == 4 and model(x).shape == (2, 3)
