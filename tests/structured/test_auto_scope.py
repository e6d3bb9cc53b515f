"""scope="auto": per-group ratios from measured sensitivity under a MACs/params budget."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TwoBranch(nn.Module):
    """Two hidden groups of 10: half of `dead` is zeroed end to end, `live` is fully used."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dead_in, self.dead_out = nn.Linear(6, 10), nn.Linear(10, 4)
        self.live_in, self.live_out = nn.Linear(6, 10), nn.Linear(10, 4)
        with torch.no_grad():
            self.dead_in.weight[5:] = 0
            self.dead_in.bias[5:] = 0
            self.dead_out.weight[:, 5:] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dead = self.dead_out(torch.relu(self.dead_in(x)))
        return dead + self.live_out(torch.relu(self.live_in(x)))


def own_targets(model: nn.Module, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(64, 6, generator=g) for _ in range(n)]
    with torch.no_grad():
        return [(x, model(x).argmax(1)) for x in xs]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_auto_spends_the_budget_on_the_redundant_group():
    model = TwoBranch().eval()
    data = own_targets(model)
    dense = params(model)
    saved = 5 * (6 + 1) + 5 * 4  # the dead half: rows and bias in, columns out
    result = pk.prune(
        model, torch.zeros(1, 6), target={"params": 1 - saved / dense}, scope="auto", data=data
    )
    kept = {g.key.split(".")[0]: len(g.keep) for g in result.plan.groups}
    assert kept == {"dead_in": 5, "live_in": 10}
    assert result.verified
    assert result.report["target"]["auto"]["ratios"] == {"dead_in.weight:0": 0.5}


def test_local_scope_spreads_the_same_budget_over_both_groups():
    model = TwoBranch().eval()
    saved = 5 * (6 + 1) + 5 * 4
    local = pk.plan(model, torch.zeros(1, 6), target={"params": 1 - saved / params(model)})
    assert all(len(g.keep) < 10 for g in local.groups)


def test_auto_meets_a_macs_target_on_a_cnn_and_is_deterministic():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 5),
    ).eval()
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g))]
    x = torch.zeros(1, 3, 8, 8)
    first = pk.plan(net, x, target={"macs": 0.5}, scope="auto", data=data)
    second = pk.plan(copy.deepcopy(net), x, target={"macs": 0.5}, scope="auto", data=data)
    assert first.to_dict() == second.to_dict()
    pruned = pk.prune(net, x, target={"macs": 0.5}, scope="auto", data=data)
    dense_macs = first.meta["target"]["dense"]
    kept = pk.profile(pruned.model, x, latency=False, memory=False, size=False).macs / dense_macs
    assert kept == pytest.approx(0.5, rel=0.02)


def test_auto_explains_what_it_needs():
    model = TwoBranch().eval()
    with pytest.raises(ValueError, match="target="):
        pk.plan(model, torch.zeros(1, 6), ratio=0.5, scope="auto", data=own_targets(model))
    with pytest.raises(ValueError, match="needs data"):
        pk.plan(model, torch.zeros(1, 6), target={"macs": 0.5}, scope="auto")


def test_sensitivity_is_measured_after_batchnorm_recalibration():
    """A candidate whose BatchNorm statistics are off is scored as it will be once they are
    re-measured, on a copy: the model's own statistics are left alone."""
    from prunekit.structured.auto import _recalibrated
    from prunekit.structured.sensitivity import _metric

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    inputs = [torch.randn(32, 6) for _ in range(2)]
    pk.recalibrate_bn(model, inputs)
    with torch.no_grad():  # targets the model gets right with its statistics in order
        batches = [(x, model(x).argmax(1)) for x in inputs]
        model[1].running_mean.fill_(5.0)  # statistics a pruned candidate no longer matches
    loss = _metric("loss")
    raw = loss(model, batches)
    assert _recalibrated(loss)(model, batches) > raw  # higher is better: a lower loss
    assert torch.all(model[1].running_mean == 5.0) and loss(model, batches) == raw


def test_auto_recalibrate_changes_the_measured_curves(zoo):
    """`auto_recalibrate=True` reaches the sensitivity measurement: with BatchNorm in the model,
    the loss curves differ from the raw ones, and the target is met all the same."""
    curves = {}
    for recalibrate in (False, True):
        model, x = zoo("seq_cnn")
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))]
        result = pk.prune(
            model, x, target={"macs": 0.5}, scope="auto", data=data, auto_recalibrate=recalibrate
        )
        assert result.verified
        curves[recalibrate] = result.report["target"]["auto"]["loss_curves"]
    assert curves[True] != curves[False]


class EncoderClassifier(nn.Module):
    """nn.TransformerEncoderLayer: its packed projection needs width == heads x head dims, so
    the residual width cannot be pruned alone in eager code."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(10, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.inp(x)).mean(1))


class LiteralSplit(nn.Module):
    """torch.split with sizes written as literals: no pruned size can run eagerly."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(torch.relu(self.stem(x)), [8, 16], dim=1)
        return self.fc(torch.cat([self.a(a), self.b(b)], 1).mean((2, 3)))


@pytest.mark.filterwarnings("ignore:target .* not reached")  # coarse steps on tiny models
@pytest.mark.filterwarnings("ignore:the model's Python code cannot run")  # LiteralSplit's fallback
@pytest.mark.parametrize(
    ("build", "shape"), [(EncoderClassifier, (4, 5, 10)), (LiteralSplit, (4, 3, 8, 8))]
)
def test_auto_and_sensitivity_measure_groups_the_eager_code_cannot_run_alone(build, shape):
    """Groups whose eager code cannot run pruned alone are measured on the pruned exported
    graph (the function the pruned model computes) instead of failing with a raw error."""
    torch.manual_seed(0)
    model = build().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g)
    data = [(x, torch.randint(0, 3, (shape[0],), generator=g))]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sens = pk.sensitivity(model, x, data, ratios=(0.5,), metric="loss", progress=False)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in state.items()
    }
    drops = [grp.drop(sens.baseline, 0.5) for grp in sens.groups]
    assert len(drops) >= 2 and any(d != 0 for d in drops)  # measured, not defaulted
    dense = pk.profile(model, x, latency=False, memory=False, size=False).macs
    result = pk.prune(model, x, target={"macs": 0.5}, scope="auto", data=data)
    pruned = pk.profile(result.model, x, latency=False, memory=False, size=False).macs
    assert result.verified and pruned < 0.6 * dense
