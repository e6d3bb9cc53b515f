"""sparsify: exact sparsity per scope, patterns, repeated calls, targets, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.unstructured import masks_of, matrix_view, scopes, sparsify, sparsity_report


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8)
    )


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 8),
    )


def zeros(model: nn.Module) -> int:
    return sum(
        int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    )


def total(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


@pytest.mark.filterwarnings("ignore:scope='global' pruned every weight")  # tiny layers
@pytest.mark.parametrize("scope", scopes.list())
@pytest.mark.parametrize("build", [mlp, cnn])
@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_exact_sparsity_per_scope(scope, build, sparsity):
    model = build()
    report = sparsify(model, sparsity, scope=scope)
    assert zeros(model) == round(sparsity * total(model))
    assert report.numel == total(model) and report.sparsity == pytest.approx(sparsity, abs=1e-3)
    assert set(masks_of(model)) == {layer.name for layer in report.layers}


def test_biases_and_norms_untouched_and_classifier_included():
    model = cnn()
    before = copy.deepcopy(model.state_dict())
    sparsify(model, 0.8)
    after = model.state_dict()
    for name in before:
        if name.endswith("bias") or name.startswith("1."):
            assert torch.equal(before[name], after[name]), name
    assert "7.weight" in masks_of(model)  # the classifier is pruned unless ignored


def test_ignore_globs_and_unknown_names():
    model = mlp()
    sparsify(model, 0.5, ignore=["4"])
    assert set(masks_of(model)) == {"0.weight", "2.weight"}
    assert int((model[4].weight == 0).sum()) == 0
    with pytest.raises(ValueError, match="match no module"):
        sparsify(mlp(), 0.5, ignore=["fc9*"])
    model = nn.Sequential(mlp(), nn.Linear(10, 4))
    sparsify(model, 0.5, ignore=["0"])  # a container: every layer in it
    assert set(masks_of(model)) == {"1.weight"}


def test_local_prunes_every_layer_equally():
    model = mlp()
    report = sparsify(model, 0.75, scope="local")
    for layer in report.layers:
        assert layer.remaining == pytest.approx(0.25, abs=1 / layer.numel)


def test_global_magnitude_matches_a_single_threshold():
    model = mlp()
    weights = torch.cat([m.weight.detach().abs().flatten() for m in model if hasattr(m, "weight")])
    threshold = weights.sort().values[round(0.6 * weights.numel()) - 1]
    sparsify(model, 0.6, scope="global")
    for m in model:
        if isinstance(m, nn.Linear):
            kept = m.weight_mask
            assert (m.weight.detach().abs()[kept] > threshold).all()


def test_a_global_threshold_that_empties_a_layer_warns_and_lamp_does_not():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # one layer far smaller than the others
    with pytest.warns(UserWarning, match=r"pruned every weight of 1 layer\(s\) \(2\.weight\)"):
        sparsify(copy.deepcopy(model), 0.6, scope="global")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = sparsify(model, 0.6, scope="lamp")
    assert report.sparsity == pytest.approx(0.6, abs=1e-3)
    assert all(mask.any() for mask in masks_of(model).values())


def test_higher_sparsity_keeps_existing_zeros_and_lower_fails():
    model = mlp()
    sparsify(model, 0.5)
    first = {k: v.clone() for k, v in masks_of(model).items()}
    sparsify(model, 0.8, scope="local")
    for name, mask in masks_of(model).items():
        assert not (mask & ~first[name]).any(), "a pruned weight came back"
    assert zeros(model) >= round(0.8 * total(model))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="never come back"):
        sparsify(model, 0.5, scope="global")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_nm_pattern_verified_exactly():
    model = cnn()
    model[0] = nn.Conv2d(4, 8, 3, padding=1)  # 4 input channels: one group of 4 per position
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = sparsify(model, pattern="2:4", scope="local")
    assert report.sparsity == pytest.approx(0.5)
    for name, module in [("0", model[0]), ("3", model[3]), ("7", model[7])]:
        groups = matrix_view(module.weight).reshape(module.weight.shape[0], -1, 4)
        assert ((groups != 0).sum(-1) <= 2).all(), name
        # groups run along input channels: a conv group is 4 channels at one kernel position
        w = module.weight.detach()
        if w.dim() == 4:
            assert torch.equal(groups[0, 0], w[0, 0:4, 0, 0])


def test_nm_keeps_the_largest_of_each_group():
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -5.0, 3.0, 0.5, 2.0, 2.5, -0.1, -3.0]]))
    sparsify(layer, pattern="2:4")
    assert layer.weight.tolist() == [[0.0, -5.0, 3.0, 0.0, 0.0, 2.5, 0.0, -3.0]]


def test_nm_skips_layers_that_cannot_hold_it_with_a_warning():
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match="left dense: 0.weight"):
        sparsify(model, pattern="2:4")
    assert set(masks_of(model)) == {"1.weight"}
    with pytest.raises(ValueError, match="fixes the sparsity"):
        sparsify(nn.Linear(8, 4), 0.7, pattern="2:4")


@pytest.mark.filterwarnings("ignore:scope='global' pruned every weight")  # tiny layers
@pytest.mark.parametrize("pattern,rows,cols", [("block4x4", 4, 4), ("block1x8", 1, 8)])
def test_block_patterns_verified_exactly(pattern, rows, cols):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.Linear(16, 8))
    report = sparsify(model, 0.75, pattern=pattern, scope="global")
    assert report.sparsity == pytest.approx(0.75)
    for module in (model[0], model[2], model[3]):
        m = matrix_view(module.weight.detach())
        tiles = (m != 0).reshape(m.shape[0] // rows, rows, m.shape[1] // cols, cols)
        count = tiles.sum((1, 3))
        assert ((count == 0) | (count == rows * cols)).all()


def test_block_ranks_tiles_by_mean_magnitude():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, 0.25, 9.0], [1.0, 1.0, 0.25, 0.25]]))
    sparsify(layer, 0.5, pattern="block2x2")
    assert layer.weight.tolist() == [[0.0, 0.0, 0.25, 9.0], [0.0, 0.0, 0.25, 0.25]]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"sparsity": 1.0}, ValueError, r"\[0, 1\)"),
        ({"sparsity": -0.1}, ValueError, r"\[0, 1\)"),
        ({"sparsity": "0.5"}, TypeError, "number"),
        ({}, ValueError, "sparsity= is required"),
        ({"sparsity": 0.5, "scope": "globl"}, ValueError, "did you mean global"),
        ({"sparsity": 0.5, "importance": "magnitud"}, ValueError, "magnitude"),
        ({"sparsity": 0.5, "importance": 3}, TypeError, "registered name"),
        ({"sparsity": 0.5, "pattern": "4:2"}, ValueError, "N:M"),
        ({"sparsity": 0.5, "pattern": "block0x4"}, ValueError, "blockRxC"),
        ({"sparsity": 0.5, "ignore": ["*"]}, ValueError, "no nn.Linear"),
        ({"sparsity": 0.5, "importance": "wanda"}, ValueError, "calibration data"),
    ],
)
def test_bad_arguments_raise_clear_errors_and_leave_the_model(kwargs, error, match):
    model = mlp()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=match):
        sparsify(model, **kwargs)
    assert masks_of(model) == {}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_pk_sparsify_is_exported_and_reports():
    model = mlp()
    report = pk.sparsify(model, sparsity=0.5)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    assert sparsity_report(model).to_dict()["nonzeros"] == report.nonzeros
    assert "total" in str(report)


def test_zoo_models_sparsify_and_still_run(zoo_name, zoo):
    model, inputs = zoo(zoo_name)
    report = sparsify(model, 0.7, scope="lamp")
    assert report.numel - report.nonzeros == round(0.7 * report.numel)
    with torch.no_grad():
        out = model(*inputs)
    assert torch.isfinite(out if isinstance(out, torch.Tensor) else out[0]).all()


def test_bfloat16_weights_keep_their_dtype():
    model = mlp().to(torch.bfloat16)
    report = sparsify(model, 0.5, scope="lamp")
    assert report.numel - report.nonzeros == round(0.5 * report.numel)
    assert model[0].weight.dtype == torch.bfloat16 and model[0].weight_mask.dtype == torch.bool


class _FusedExperts(nn.Module):
    """Expert weights held as one [experts, out, in] parameter (as Mixtral's in transformers 5),
    beside a Linear: sparsify cannot prune them and says so."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)  # dense by design: not reported
        self.experts = nn.Parameter(torch.randn(4, 16, 8))
        self.out = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.einsum("bd,eod->bo", self.embed(ids), self.experts))


def test_weights_outside_linear_and_conv_are_reported_dense():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"1 other weight tensor\(s\) holding 89% .*experts"):
        sparsify(_FusedExperts(), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsify(_FusedExperts(), 0.5, ignore=["experts"])  # named: the user knows
        sparsify(mlp(), 0.5)  # a model of Linear layers only


def test_tied_head_pruned_with_its_embedding_is_named():
    """An lm_head tied to the input embedding is pruned with it: the warning says so and how to
    keep it dense."""
    torch.manual_seed(0)
    embed = nn.Embedding(20, 8)
    head = nn.Linear(8, 20, bias=False)
    head.weight = embed.weight
    model = nn.Sequential(embed, nn.Linear(8, 8), head)
    with pytest.warns(UserWarning, match=r"2.weight is shared with 0.weight .*ignore=\['2'\]"):
        sparsify(model, 0.5)
    assert (embed.weight == 0).float().mean() > 0.2  # the table lost the head's entries
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsify(nn.Sequential(embed, nn.Linear(8, 8), head), 0.5, ignore=["2"])
