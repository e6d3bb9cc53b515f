"""prunekit.sensitivity: each group pruned alone, measured, and the model restored."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk


class TwoBranch(nn.Module):
    """Two independent hidden groups: `dead` half-dead (its second half is zeroed end to end),
    `live` fully used. Pruning half of `dead` by magnitude removes only dead channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dead_in, self.dead_out = nn.Linear(6, 8), nn.Linear(8, 4)
        self.live_in, self.live_out = nn.Linear(6, 8), nn.Linear(8, 4)
        with torch.no_grad():
            self.dead_in.weight[4:] = 0
            self.dead_in.bias[4:] = 0
            self.dead_out.weight[:, 4:] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dead = self.dead_out(torch.relu(self.dead_in(x)))
        return dead + self.live_out(torch.relu(self.live_in(x)))


def data(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(32, 6, generator=g), torch.randint(0, 4, (32,), generator=g)) for _ in range(n)
    ]


def test_dead_channels_cost_nothing_and_live_ones_do():
    model = TwoBranch().eval()
    with torch.no_grad():  # targets the model predicts: any real change raises the loss
        own = [(x, model(x).argmax(1)) for x, _ in data()]
    sens = pk.sensitivity(model, torch.zeros(1, 6), own, "loss", ratios=(0.5,), progress=False)
    drops = {g.key.split(".")[0]: g.drop(sens.baseline, 0.5) for g in sens.groups}
    assert drops["dead_in"] == pytest.approx(0.0, abs=1e-6)
    assert drops["live_in"] > 1e-3
    assert sens.ranked(0.5)[0].key.startswith("live_in")


def test_model_is_restored_after_every_measurement():
    model = TwoBranch().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pk.sensitivity(model, torch.zeros(1, 6), data(), ratios=(0.25, 0.75), progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.live_in.out_features == 8 and model.live_out.in_features == 8


def test_custom_metric_sees_the_pruned_model_and_the_batches():
    model = TwoBranch().eval()
    widths = []

    def width(m, batches):
        assert len(batches) == 2
        widths.append(m.live_in.out_features)
        return float(m.live_in.out_features)

    sens = pk.sensitivity(
        model, torch.zeros(1, 6), data(), width, ratios=(0.5,), batches=2, progress=False
    )
    assert sens.baseline == 8.0
    live = next(g for g in sens.groups if g.key.startswith("live_in"))
    assert live.metric["0.5"] == 4.0 and 4 in widths


def test_results_serialise_tabulate_and_plot(tmp_path):
    sens = pk.sensitivity(TwoBranch().eval(), torch.zeros(1, 6), data(), progress=False)
    doc = json.loads(sens.to_json())
    assert doc["ratios"] == [0.25, 0.5, 0.75] and len(doc["groups"]) == 2
    assert "live_in" in sens.table() and "drop@0.5" in sens.table()
    png = sens.plot(tmp_path / "s.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratios": (0.0, 0.5)}, ValueError, "ratios"),
        ({"ratios": (1.5,)}, ValueError, "ratios"),
        ({"metric": "f1"}, ValueError, "unknown metric"),
        ({"data": None}, ValueError, "needs data"),
        ({"data": []}, ValueError, "no batches"),
    ],
)
def test_bad_arguments_are_explained(kwargs, error, match):
    args = {"data": data(), "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        pk.sensitivity(TwoBranch().eval(), torch.zeros(1, 6), **args)
