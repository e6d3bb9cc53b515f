"""prunekit.compare: a grid of configurations, each pruned on a copy, with the Pareto front."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.structured.compare import ComparisonRow, _mark_front


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 3),
    ).eval()


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g))
        for _ in range(n)
    ]


def test_grid_rows_meet_their_budgets_and_leave_the_model_alone(tmp_path):
    model = cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grid = pk.compare(
        model,
        torch.zeros(1, 1, 6, 6),
        batches(),
        criteria=["l2", "random"],
        scopes=["local", "global"],
        budgets=[0.5],
        progress=False,
    )
    assert len(grid.rows) == 4
    for row in grid.rows:
        assert row.macs_kept == pytest.approx(
            row.budget, rel=0.02
        )  # the 2% promise of MACs targets
        assert 0.0 <= row.accuracy <= 1.0
    assert any(r.pareto for r in grid.rows)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert json.loads(grid.to_json())["rows"][0]["importance"] in ("l2", "random")
    assert "*front" in grid.table()
    assert grid.plot(tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_pareto_front_is_the_set_of_undominated_rows():
    rows = [
        ComparisonRow("a", "local", 0.5, 0.5, 0.5, 0.90),
        ComparisonRow("b", "local", 0.5, 0.5, 0.5, 0.80),  # dominated by a
        ComparisonRow("c", "local", 0.25, 0.25, 0.25, 0.85),
        ComparisonRow("d", "local", 0.25, 0.30, 0.3, 0.84),  # dominated by c
    ]
    _mark_front(rows)
    assert [r.importance for r in rows if r.pareto] == ["a", "c"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"criteria": ["nope"]}, "nope"),
        ({"scopes": ["sideways"]}, "scope"),
        ({"budgets": [1.5]}, "budgets"),
    ],
)
def test_bad_grids_fail_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pk.compare(cnn(), torch.zeros(1, 1, 6, 6), batches(), progress=False, **kwargs)
