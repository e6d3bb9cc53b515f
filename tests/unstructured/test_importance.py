"""Per-weight importance: hand-computed magnitude, wanda, movement; registry-wide checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.train import fit
from prunekit.unstructured import (
    KeepMasks,
    Movement,
    Wanda,
    find_targets,
    importances,
    masks_of,
    sparsify,
)


def two_by_two(values) -> nn.Linear:
    layer = nn.Linear(2, len(values), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(values))
    return layer


def test_wanda_hand_computed_and_compared_per_row():
    layer = two_by_two([[4.0, 1.0], [3.0, 2.0]])
    x = torch.tensor([[1.0, 6.0], [0.0, 8.0]])  # feature norms: 1 and 10
    scores = Wanda().scores(layer, find_targets(layer), data=[(x, None)])
    assert torch.allclose(scores["weight"], torch.tensor([[4.0, 10.0], [3.0, 20.0]]))
    sparsify(layer, 0.5, importance="wanda", data=[(x, torch.zeros(2))])
    assert layer.weight.tolist() == [[0.0, 1.0], [0.0, 2.0]]  # one per row; magnitude differs
    plain = two_by_two([[4.0, 1.0], [3.0, 2.0]])
    sparsify(plain, 0.5)
    assert plain.weight.tolist() == [[4.0, 0.0], [3.0, 0.0]]


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2),
        dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding=1, groups=2),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding="same", groups=4),
    ],
)
def test_wanda_conv_norms_match_im2col(conv):
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv)
    x = torch.randn(3, 4, 7, 9)
    got = Wanda().scores(layer, find_targets(layer), data=[x])["weight"]
    k, groups = layer.kernel_size, layer.groups
    pad = layer._reversed_padding_repeated_twice
    cols = F.unfold(F.pad(x, pad), k, dilation=layer.dilation, stride=layer.stride)
    norms = cols.pow(2).sum((0, 2)).sqrt().reshape(4, *k)  # [C, kh, kw]
    per_group = norms.reshape(groups, 4 // groups, *k)
    owner = torch.arange(layer.out_channels) // (layer.out_channels // groups)
    assert torch.allclose(got, layer.weight.detach().abs() * per_group[owner], rtol=1e-5)


class _CrossAttention(nn.Module):
    """An nn.MultiheadAttention called with keywords on three different inputs."""

    def __init__(self, kdim: int | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, kdim=kdim, vdim=kdim, batch_first=True)

    def forward(self, q, k, v):
        return self.attn(query=q, key=k, value=v, need_weights=False)[0]


@pytest.mark.parametrize("kdim", [None, 6])
def test_wanda_on_multihead_attention_reads_each_projection_input(kdim):
    """in_proj_weight's q, k and v rows multiply the query, key and value: each block of rows
    is scaled by the norms of its own input (q/k/v_proj_weight when key sizes differ)."""
    torch.manual_seed(0)
    model = _CrossAttention(kdim)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, kdim or 4), torch.randn(2, 5, kdim or 4)
    targets = find_targets(model)
    assert [t.attr for t in targets] == (
        ["in_proj_weight", "weight"] if kdim is None else
        ["q_proj_weight", "k_proj_weight", "v_proj_weight", "weight"]
    )  # fmt: skip
    scores = Wanda().scores(model, targets, data=[((q, k, v), None)])

    def norms(x):
        return x.reshape(-1, x.shape[-1]).pow(2).sum(0).sqrt()

    attn = model.attn
    if kdim is None:
        w = attn.in_proj_weight.detach().abs()
        expected = torch.cat([w[:4] * norms(q), w[4:8] * norms(k), w[8:] * norms(v)])
        assert torch.allclose(scores["attn.in_proj_weight"], expected)
    else:
        for name, x in (("q", q), ("k", k), ("v", v)):
            w = getattr(attn, f"{name}_proj_weight").detach().abs()
            assert torch.allclose(scores[f"attn.{name}_proj_weight"], w * norms(x))
    sparsify(model, 0.5, importance="wanda", scope="local", data=[((q, k, v), None)])
    for target in targets:  # half of every row, the masks hold through training
        assert (target.weight == 0).sum(1).tolist() == [target.weight.shape[1] // 2] * len(
            target.weight
        )
    fit(model, [((q, k, v), torch.zeros(2, 3, 4))], loss_fn=lambda m, batch: m(*batch[0]).pow(2).mean(),
        epochs=1, lr=0.1, callbacks=[KeepMasks()], progress=False)  # fmt: skip
    assert all((t.weight == 0).sum() == t.weight.numel() // 2 for t in targets)


def test_wanda_without_data_fails_clearly():
    with pytest.raises(ValueError, match="wanda.*needs calibration data: pass data="):
        sparsify(nn.Linear(4, 4), 0.5, importance="wanda")


def test_movement_hand_computed():
    layer = two_by_two([[3.0, -2.0]])
    layer.weight.grad = torch.tensor([[0.5, 0.5]])
    movement = Movement()
    movement.accumulate(layer)
    movement.accumulate(layer)
    assert torch.allclose(movement.accumulated["weight"], torch.tensor([[-3.0, 2.0]]))
    sparsify(layer, 0.5, importance=movement)
    assert layer.weight.tolist() == [[0.0, -2.0]]  # magnitude would have pruned -2


def test_movement_one_step_from_data_and_needs_something():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    scores = Movement().scores(model, find_targets(model), data=[(x, y)])
    assert all(p.grad is None for p in model.parameters())  # no trace on the user's model
    F.cross_entropy(model(x), y).backward()
    assert torch.allclose(scores["0.weight"], -(model[0].weight * model[0].weight.grad))
    with pytest.raises(ValueError, match="accumulated during training"):
        sparsify(model, 0.5, importance="movement")
    with pytest.raises(ValueError, match="nonnegative"):
        sparsify(model, 0.5, importance="movement", scope="lamp", data=[(x, y)])


def test_movement_accumulates_as_a_fit_callback():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    movement = Movement()
    fit(model, data, epochs=1, lr=0.1, callbacks=[movement], progress=False)
    assert set(movement.accumulated) == {"0.weight", "2.weight"}
    sparsify(model, 0.5, importance=movement, scope="local")
    fit(model, data, epochs=1, lr=0.1, callbacks=[movement, KeepMasks()], progress=False)
    assert all((model[0].weight[~m] == 0).all() for m in [masks_of(model)["0.weight"]])


@pytest.mark.parametrize("name", importances.list())
def test_every_registered_importance_sparsifies_exactly(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    data = [(torch.randn(8, 6), torch.randint(0, 4, (8,))) for _ in range(2)]
    report = sparsify(model, 0.6, importance=name, data=data, scope="global")
    assert report.numel - report.nonzeros == round(0.6 * report.numel)


def test_custom_importance_object_and_bad_shapes():
    class Reverse:
        def scores(self, model, targets, data=None):
            return {t.name: -t.weight.detach().abs() for t in targets}

    layer = two_by_two([[4.0, 1.0], [3.0, 2.0]])
    sparsify(layer, 0.5, importance=Reverse())
    assert layer.weight.tolist() == [[0.0, 1.0], [0.0, 2.0]]

    class Broken:
        def scores(self, model, targets, data=None):
            return {t.name: torch.zeros(3) for t in targets}

    with pytest.raises(ValueError, match="shaped like the weight"):
        sparsify(nn.Linear(2, 2), 0.5, importance=Broken())


def test_per_row_pruning_of_an_unevenly_pruned_layer_meets_the_target():
    """Wanda's per-row comparison on a layer already pruned unevenly (a global threshold
    before): rows that lost more keep their zeros and count towards the target, the others are
    levelled up to it; adding a full quota to every row overshot (0.55 asked 0.5)."""
    from prunekit.unstructured._select import prune_per_row

    scores = torch.arange(24.0).reshape(4, 6)
    forced = torch.zeros(4, 6, dtype=torch.bool)
    forced[0, :5] = True  # row 0 already lost 5 of 6
    pruned = prune_per_row(scores, forced, 12)
    assert pruned.sum(1).tolist() == [5, 3, 2, 2]  # level 2; row 1's 3rd candidate is lowest
    assert bool((pruned | forced).eq(pruned).all())  # earlier zeros stay
    assert prune_per_row(scores, torch.zeros_like(forced), 13).sum(1).tolist() == [4, 3, 3, 3]
    assert prune_per_row(scores, forced, 3).sum(1).tolist() == [5, 0, 0, 0]  # over k already
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    data = [(torch.randn(8, 16), None)]
    sparsify(model, 0.4)  # global: uneven rows, 34.8% of the first layer
    sparsify(model, 0.5, importance="wanda", scope="local", data=data)
    assert float((model[0].weight == 0).float().mean()) == 0.5  # exactly, not 0.5 + leftovers


def test_gpt2_conv1d_weights_are_pruned_along_their_outputs():
    """GPT-2's Conv1D stores its weight [in, out] (`x @ W`): wanda scales each entry by its
    input's norm (along the rows), compares within each output (a column), and 2:4 groups run
    along the inputs; they were left dense."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 4), nn.ReLU(), Conv1D(3, 6))  # Conv1D(nf=out, nx=in)
    x = torch.randn(5, 4)
    targets = find_targets(model)
    assert [(t.name, t.transposed) for t in targets] == [("0.weight", True), ("2.weight", True)]
    scores = Wanda().scores(model, targets, data=[(x, None)])
    norms = x.pow(2).sum(0).sqrt()  # [in]
    assert torch.allclose(scores["0.weight"], model[0].weight.abs() * norms[:, None])
    sparsify(model, 0.5, importance="wanda", data=[(x, None)])
    assert (model[0].weight == 0).sum(0).tolist() == [2] * 6  # half of every output's inputs
    assert (model[2].weight == 0).sum(0).tolist() == [3] * 3
    nm = nn.Sequential(Conv1D(6, 8))
    sparsify(nm, pattern="2:4")
    groups = (nm[0].weight.t().reshape(6, 2, 4) != 0).sum(-1)  # [out, in / 4]
    assert groups.eq(2).all()


def test_wanda_defaults_to_the_same_sparsity_in_every_layer():
    """One threshold over all layers compares activation scales of different layers (it
    emptied GPT-2's c_proj layers): wanda's default scope is local, as in its paper."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].weight.mul_(0.01)  # small weights, as after a wide layer
    report = sparsify(model, 0.5, importance="wanda", data=[(torch.randn(16, 8), None)])
    assert [round(layer.sparsity, 3) for layer in report.layers] == [0.5, 0.5]
