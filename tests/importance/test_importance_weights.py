"""Weight criteria (bn_scale, fpgm, lamp) against values computed by hand."""

import math

import pytest
import torch
from torch import nn

import prunekit as pk


def test_bn_scale_falls_back_to_l1_without_a_norm(mlp, scores, check):
    # sum of |w| over each channel's slices: |1|+|0|+0+|1|+|2| = 4, 0+2+0+1+0 = 3, 1+1+1+0+1 = 4
    model, x, _ = mlp()
    check(scores(model, x, "bn_scale"), [4.0, 3.0, 4.0])
    check(scores(model, x, "l1"), [4.0, 3.0, 4.0])


class TwoNorms(nn.Module):
    """Two conv -> BN branches added: their |gamma| add up on the shared channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3)
        self.b, self.bn_b = nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3)
        self.out = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.bn_a.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
            self.bn_b.weight.copy_(torch.tensor([1.0, 1.0, -0.25]))

    def forward(self, x):
        return self.out(torch.relu(self.bn_a(self.a(x)) + self.bn_b(self.b(x)))).flatten(1)


def test_bn_scale_sums_the_norm_scales_only(scores, check):
    # |0.5| + |1|, |-2| + |1|, |1| + |-0.25|: conv weights, biases and beta do not count
    check(scores(TwoNorms().eval(), torch.randn(2, 1, 3, 3), "bn_scale"), [1.5, 3.0, 1.25])


def test_bn_scale_finds_norms_by_class_name(scores, check):
    class RMSNorm(nn.Module):  # hand-written, as in Llama: no ATen norm op in the graph
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([2.0, -0.5, 1.0]))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    model = nn.Sequential(nn.Linear(4, 3), RMSNorm(), nn.Linear(3, 2)).eval()
    check(scores(model, torch.randn(2, 4), "bn_scale"), [2.0, 0.5, 1.0])


def test_fpgm_sums_distances_to_the_other_channels(mlp, scores, check):
    # |v0-v1|^2 = 1+4+0+0+4 = 9, |v0-v2|^2 = 4+1+1+1+9 = 16, |v1-v2|^2 = 1+1+1+1+1 = 5
    model, x, _ = mlp()
    check(scores(model, x, "fpgm"), [3 + 4, 3 + math.sqrt(5), 4 + math.sqrt(5)])


def test_fpgm_counts_tied_weights_once(scores, check):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(4, 2)
            self.mid = nn.Linear(2, 2, bias=False)
            self.head = nn.Linear(2, 4, bias=False)
            self.head.weight = self.emb.weight
            with torch.no_grad():
                self.emb.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0, 0]]))
                self.mid.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))

        def forward(self, ids):
            h = self.emb(ids)
            return self.head(h + self.mid(h))

    # channel vectors: emb column (once) + mid row + mid column
    # v0 = (1, 0, 1, 0 | 1, 2 | 1, 0), v1 = (0, 1, 1, 0 | 0, 0 | 2, 0): |v0 - v1|^2 = 1+1+1+4+1 = 8
    d = math.sqrt(8)
    check(scores(Tied().eval(), torch.tensor([[0, 1], [2, 3]]), "fpgm"), [d, d])


def test_lamp_divides_by_the_larger_channels(mlp, scores, check):
    # squared norms 6, 5, 4; ascending 4, 5, 6: 4/15, 5/11, 6/6
    model, x, _ = mlp()
    check(scores(model, x, "lamp"), [1.0, 5 / 11, 4 / 15])


def test_lamp_is_scale_invariant_and_handles_zeros():
    from prunekit.importance.lamp import lamp_scores

    u = torch.tensor([4.0, 0.0, 2.0, 2.0])
    torch.testing.assert_close(lamp_scores(u), lamp_scores(1000 * u))
    # ascending 0, 2 (index 2), 2 (index 3), 4: 0/8, 2/8, 2/6, 4/4
    torch.testing.assert_close(
        lamp_scores(u), torch.tensor([1.0, 0.0, 0.25, 1 / 3], dtype=torch.float64)
    )
    assert torch.equal(lamp_scores(torch.zeros(3)), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("name", ["l1", "l2", "lamp", "fpgm", "bn_scale"])
def test_weight_criteria_ignore_data(mlp, scores, name):
    model, x, y = mlp()
    assert torch.equal(scores(model, x, name), scores(model, x, name, data=[(x, y)]))


@pytest.mark.parametrize("name", ["bn_scale", "fpgm", "lamp"])
def test_weight_criteria_score_every_zoo_group(zoo, zoo_name, name):
    model, x = zoo(zoo_name)
    graph = pk.trace(model, x)
    out = pk.importance.get(name).scores(graph, graph.groups)
    for g in graph.groups:
        assert out[g.key].shape == (g.size,) and torch.isfinite(out[g.key]).all()
