"""The exported-graph fallback at other batch sizes and other image sizes / sequence lengths.

`pk.prune` returns the pruned exported graph where the model's Python code cannot run at the
pruned sizes; users deploy it, so it must accept what the eager model accepts (any batch, and the
sizes the model leaves free) and compute the same thing there, or refuse clearly.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.structured import fallback


def _prune(model: nn.Module, x: torch.Tensor, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pk.prune(model, x, **kwargs)
    assert result.model is not model and result.report["fallback"] == "exported-graph"
    assert result.verified
    return result


def _per_sample(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([module(x[i : i + 1]) for i in range(x.shape[0])])


class SliceAfterLiteralReshape(nn.Module):
    """`h[:, :1]` slices the batch dim (0:INT_MAX) then the tokens; the literal 16 forces the
    fallback."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 8)

    def forward(self, x):  # [B, 5, 16]
        h = torch.relu(self.fc1(x))
        h = h.reshape(h.shape[0], 5, 4, 16).flatten(2)
        return self.fc2(h[:, :1])


class ChannelSlices(nn.Module):
    """Slices of a pruned channel dim, one with an open end, after a literal reshape."""

    def __init__(self):
        super().__init__()
        self.fc1, self.a, self.b = nn.Linear(16, 32), nn.Linear(8, 4), nn.Linear(24, 4)

    def forward(self, x):  # [B, 16]
        h = torch.relu(self.fc1(x)).reshape(x.shape[0], 4, 8).flatten(1)
        return self.a(h[:, :8]) + self.b(h[:, 8:]) + self.b(h[:, -24:])


@pytest.mark.parametrize("example_batch", [1, 2])
def test_slices_off_the_pruned_dims_keep_every_batch_size(example_batch):
    torch.manual_seed(0)
    model = SliceAfterLiteralReshape().eval()
    result = _prune(model, torch.randn(example_batch, 5, 16), ratio=0.25)
    assert model.fc1.out_features == 64  # the user's model is untouched
    with torch.no_grad():
        for batch in (1, 3, 5):
            x = torch.randn(batch, 5, 16)
            out = result.model(x)
            assert out.shape == (batch, 1, 8)
            torch.testing.assert_close(out, _per_sample(result.model, x))
    # the batch slice stays open: no bound taken from the capture's batch
    assert "slice.Tensor(flatten, 0, 0, 9223372036854775807)" in result.model.code


def test_slices_of_pruned_channels_count_kept_channels_and_stay_open():
    torch.manual_seed(0)
    model = ChannelSlices().eval()
    result = _prune(model, torch.randn(1, 16), ratio=0.5)
    with torch.no_grad():
        for batch in (1, 3, 5):
            x = torch.randn(batch, 16)
            torch.testing.assert_close(result.model(x), _per_sample(result.model, x))
    # the open end of h[:, 8:] (a pruned dim) is still open
    slices = [line for line in result.model.code.splitlines() if "slice.Tensor(" in line]
    assert any(line.rstrip().split(";")[0].endswith("9223372036854775807)") for line in slices)


class SplitConv(nn.Module):
    """Literal split sizes: the fallback; fully convolutional: any image size runs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        a, b = torch.split(F.relu(self.stem(x)), [8, 16], dim=1)
        return self.fc(torch.cat([self.a(a), self.b(b)], 1).mean((2, 3)))


class LiteralHeadAttention(nn.Module):
    """Head size written as a literal: the fallback; any sequence length runs."""

    def __init__(self):
        super().__init__()
        self.qkv, self.o = nn.Linear(32, 96), nn.Linear(32, 32)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, 4, 8).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
        return x + self.o((att @ v).transpose(1, 2).reshape(B, T, 32))


class PatchMerge(nn.Module):
    """Folds 2 x 2 pixels into channels with literal sizes: even image sizes only."""

    def __init__(self):
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(64, 8, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        h = F.relu(self.stem(x)).reshape(B, 16, H // 2, 2, W // 2, 2)
        h = h.permute(0, 1, 3, 5, 2, 4).reshape(B, 64, H // 2, W // 2)
        return self.head(h).mean((2, 3))


class HeadsInBatch(nn.Module):
    """BoTNet's attention: heads folded into the batch (`b * self.heads`, a run-time size the
    fallback rescales), the output width written as a number (the fallback)."""

    def __init__(self):
        super().__init__()
        self.heads = 4
        self.qkv, self.proj = nn.Conv2d(8, 24, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        q = q.reshape(b * self.heads, 2, -1).transpose(1, 2)
        k = k.reshape(b * self.heads, 2, -1)
        v = v.reshape(b * self.heads, 2, -1).transpose(1, 2)
        y = ((q @ k).softmax(-1) @ v).transpose(1, 2)
        return self.proj(y.reshape(b, 8, h, w))


SQUARE = r"\(\*, 3, \*, \*\)"


@pytest.mark.parametrize(
    "cls, example, other, wrong, expected, options",
    [
        (SplitConv, (2, 3, 8, 8), (3, 3, 16, 12), (2, 4, 8, 8), SQUARE, {}),
        (LiteralHeadAttention, (1, 6, 32), (3, 9, 32), (2, 6, 30), r"\(\*, \*, 32\)", {}),
        (PatchMerge, (2, 3, 8, 8), (1, 3, 12, 6), (2, 3, 8, 8, 1), SQUARE, {}),
        (
            HeadsInBatch,
            (2, 8, 3, 3),
            (3, 8, 5, 4),
            (2, 6, 3, 3),
            r"\(\*, 8, \*, \*\)",
            {"attention": "heads"},
        ),
    ],
)
def test_the_fallback_runs_at_the_sizes_the_model_leaves_free(
    cls, example, other, wrong, expected, options
):
    torch.manual_seed(0)
    result = _prune(cls().eval(), torch.randn(example), ratio=0.5, **options)
    # the same plan pruned with example inputs of the other size computes the same there
    torch.manual_seed(0)
    there = _prune(cls().eval(), torch.randn(other), ratio=0.5, **options)
    assert result.plan.to_dict()["groups"] == there.plan.to_dict()["groups"]
    x = torch.randn(other)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), there.model(x))
        assert result.model(torch.randn(example)).shape == there.model(torch.randn(example)).shape
    # sizes the model fixes (input channels, model width) are named in a ValueError
    with pytest.raises(ValueError, match=expected):
        result.model(torch.randn(wrong))


def test_a_broken_size_constraint_is_a_value_error():
    torch.manual_seed(0)
    result = _prune(PatchMerge().eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    with pytest.raises(ValueError, match=r"break .*Guard failed.*\(\*, 3, \*, \*\)"):
        result.model(torch.randn(2, 3, 9, 8))  # odd height: H // 2 * 2 != H


def test_sizes_the_model_fixes_raise_a_value_error_naming_them():
    torch.manual_seed(0)
    result = _prune(SliceAfterLiteralReshape().eval(), torch.randn(1, 5, 16), ratio=0.25)
    with pytest.raises(ValueError, match=r"`x` has shape \(3, 6, 16\).*\(\*, 5, 16\)"):
        result.model(torch.randn(3, 6, 16))


def test_without_a_dynamic_capture_the_fixed_sizes_are_warned_and_checked(monkeypatch):
    monkeypatch.setattr(
        fallback, "_export_free_sizes", lambda graph: {"failure": "torch.export: refused"}
    )
    torch.manual_seed(0)
    model, x = SplitConv().eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(model, x, ratio=0.5)
    assert result.verified and result.report["fallback"] == "exported-graph"
    messages = {str(w.message) for w in caught if "accepts only" in str(w.message)}
    assert messages and all("(*, 3, 8, 8)" in m and "refused" in m for m in messages)
    assert result.model(torch.randn(5, 3, 8, 8)).shape == (5, 5)  # any batch
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\).*accepts `x` \(\*, 3, 8, 8\)"):
        result.model(torch.randn(2, 3, 16, 16))


def test_a_free_size_capture_that_runs_too_long_keeps_the_fixed_sizes(monkeypatch):
    """torch.export's shape reasoning with every size dynamic ran for hours on DaViT: past
    the time limit the fixed-size graph is returned, with the warning saying why."""
    from prunekit.io import _exported

    monkeypatch.setattr(_exported, "FREE_SIZES_SECONDS", 1e-6)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(SplitConv().eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.verified and result.report["fallback"] == "exported-graph"
    assert any("took longer than" in str(w.message) for w in caught)
    assert result.model(torch.randn(5, 3, 8, 8)).shape == (5, 5)


@pytest.mark.parametrize("pass_inputs", [False, True])
def test_a_saved_fallback_accepts_the_sizes_it_accepted(tmp_path, pass_inputs):
    """pk.save captures the pruned graph again from the inputs it was made from (or the
    example inputs passed, a batch of 1 included) with its free sizes free: the loaded program
    runs at other batches and image sizes (it was re-exported at the example's sizes, or refused
    without example inputs)."""
    torch.manual_seed(0)
    result = _prune(SplitConv().eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    example = (torch.randn(1, 3, 8, 8),) if pass_inputs else None
    pk.save(result.model, tmp_path / "s", example_inputs=example)
    loaded = pk.load(tmp_path / "s")
    x = torch.randn(3, 3, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x))


class CachedSlice(SliceAfterLiteralReshape):
    """Takes `use_cache` as Hugging Face models do: prunekit captures it with use_cache=False."""

    def forward(self, x, use_cache=True):
        return super().forward(x)


def test_settings_added_for_the_capture_may_be_left_out(tmp_path):
    """The graph was captured with use_cache=False (added by prunekit, not by the caller): the
    pruned graph and its save are called as the model was, without it (they demanded it)."""
    torch.manual_seed(0)
    model = CachedSlice().eval()
    result = _prune(model, torch.randn(1, 5, 16), ratio=0.25)
    x = torch.randn(3, 5, 16)
    pk.save(result.model, tmp_path / "s")
    loaded = pk.load(tmp_path / "s")
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), loaded(x))
        torch.testing.assert_close(result.model(x), result.model(x, use_cache=False))


class SharedUnderTwoNames(SliceAfterLiteralReshape):
    """fc1 registered under two names (CoaT shares its position-encoding convs this way)."""

    def __init__(self):
        super().__init__()
        self.block = nn.Module()
        self.block.fc1 = self.fc1


def test_a_parameter_under_two_names_stays_one_in_the_fallback():
    """The sliced weight is one Parameter under both names, as in the model (each name got
    its own copy: CoaT's pruned graph held more parameters than the unpruned model)."""
    torch.manual_seed(0)
    result = _prune(SharedUnderTwoNames().eval(), torch.randn(2, 5, 16), ratio=0.25)
    pruned = result.model
    assert pruned.block.fc1.weight is pruned.fc1.weight
    assert pruned.fc1.weight.shape == (48, 16)
    assert sum(p.numel() for p in pruned.parameters()) == (48 * 16 + 48) + (8 * 48 + 8)
