"""Schedules: the gradual (Zhu & Gupta) formula, use inside fit, iterative rounds, configs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.train import Callback, fit
from prunekit.unstructured import (
    GradualSchedule,
    IterativeSchedule,
    KeepMasks,
    masks_of,
    one_shot,
    schedules,
    sparsity_report,
)


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    data = [(torch.randn(16, 8), torch.randint(0, 4, (16,))) for _ in range(5)]
    return model, data


@pytest.mark.parametrize("t", [10, 20, 35, 50, 77, 110])
def test_gradual_matches_the_cubic_formula(t):
    s = GradualSchedule(sparsity=0.9, initial=0.1, begin=10, end=110, every=5)
    expected = 0.9 + (0.1 - 0.9) * (1 - (t - 10) / 100) ** 3
    assert s.sparsity_at(t) == pytest.approx(expected)
    assert s.sparsity_at(5) == 0.0 and s.sparsity_at(500) == 0.9


@pytest.mark.filterwarnings("ignore:scope='global' pruned every weight")  # tiny layers
def test_gradual_inside_fit_reaches_the_target_monotonically():
    model, data = model_and_data()
    seen: list[tuple[int, float]] = []
    targets: list[tuple[int, float | None]] = []

    class Watch(Callback):
        def on_step_end(self, state):
            seen.append((state.step, sparsity_report(state.model).sparsity))
            targets.append((state.step, schedule._last))

    schedule = GradualSchedule(sparsity=0.8, begin=2, end=12, every=3)
    fit(model, data, epochs=4, lr=0.05, callbacks=[schedule, Watch()], progress=False)
    levels = [s for _, s in seen]
    assert levels == sorted(levels)
    assert seen[0][1] == 0.0 and levels[-1] == pytest.approx(0.8, abs=1e-3)
    changes = [step for (step, s), (_, prev) in zip(targets[1:], targets) if s != prev]
    assert changes == [2, 5, 8, 11, 12]  # begin + k * every, then end (step 2: s_i = 0)
    assert targets[4] == (5, pytest.approx(0.8 - 0.8 * (1 - 0.3) ** 3))
    assert targets[-1] == (20, 0.8)
    assert sparsity_report(model).numel - sparsity_report(model).nonzeros == round(
        0.8 * sparsity_report(model).numel
    )
    params = dict(model.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in masks_of(model).items())


def test_gradual_end_defaults_to_three_quarters_of_the_run():
    model, data = model_and_data()
    schedule = GradualSchedule(sparsity=0.5, every=1)
    fit(model, data, epochs=4, lr=0.05, callbacks=[schedule], progress=False)
    assert schedule._end == 15
    assert sparsity_report(model).sparsity == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="needs the run's length"):
        fit(
            model, iter(data), schedule="constant", callbacks=[GradualSchedule(0.6)], progress=False
        )


def test_gradual_with_movement_scores_accumulated_by_the_schedule():
    model, data = model_and_data()
    schedule = GradualSchedule(sparsity=0.7, begin=1, end=9, every=2, importance="movement")
    fit(model, data, epochs=2, lr=0.05, callbacks=[schedule], progress=False)
    assert sparsity_report(model).sparsity == pytest.approx(0.7, abs=1e-3)


@pytest.mark.filterwarnings("ignore:scope='global' pruned every weight")  # tiny layers
@pytest.mark.parametrize("spacing", ["geometric", "linear", "cubic"])
def test_iterative_rounds_prune_then_retrain(spacing):
    model, data = model_and_data()
    schedule = IterativeSchedule(sparsity=0.875, rounds=3, spacing=spacing)
    levels = schedule.sparsities()
    assert levels[-1] == 0.875 and levels == sorted(levels) and len(levels) == 3
    if spacing == "geometric":  # the same fraction of the remaining weights each round
        assert levels == pytest.approx([0.5, 0.75, 0.875])
    calls = []

    def retrain(m, r):
        calls.append((r, sparsity_report(m).sparsity))
        fit(m, data, epochs=1, lr=0.05, callbacks=[KeepMasks()], progress=False)

    reports = schedule.run(model, retrain)
    assert [r for r, _ in calls] == [0, 1, 2]
    assert [rep.sparsity for rep in reports] == pytest.approx(levels, abs=1e-2)
    assert sparsity_report(model).sparsity == pytest.approx(0.875, abs=1e-3)


def test_one_shot_and_registry_and_round_trip():
    assert one_shot(0.9).sparsities() == [0.9]
    assert schedules.list() == ["gradual", "iterative", "one-shot"]
    g = schedules.get("gradual")(sparsity=0.9, every=10, scope="lamp", ignore=["fc3"])
    data = g.to_dict()
    assert data["name"] == "gradual" and data["ignore"] == ["fc3"] and "data" not in data
    assert GradualSchedule.from_dict(data) == g
    it = IterativeSchedule(sparsity=0.8, rounds=2, scope="erk")
    assert IterativeSchedule.from_dict(it.to_dict()) == it
    with pytest.raises(ValueError, match="unknown IterativeSchedule fields"):
        IterativeSchedule.from_dict({"sparsity": 0.5, "round": 2})


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: GradualSchedule(sparsity=1.2), r"\[0, 1\)"),
        (lambda: GradualSchedule(sparsity=0.5, initial=0.6), "must not exceed"),
        (lambda: GradualSchedule(sparsity=0.5, every=0), "every must be >= 1"),
        (lambda: GradualSchedule(sparsity=0.5, begin=10, end=5), "end"),
        (lambda: GradualSchedule(sparsity=0.5, pattern="2:4"), "fixes the sparsity"),
        (lambda: GradualSchedule(sparsity=0.5, importance="magn"), "magnitude"),
        (lambda: IterativeSchedule(sparsity=0.5, rounds=0), "rounds"),
        (lambda: IterativeSchedule(sparsity=0.5, spacing="log"), "spacing"),
        (lambda: GradualSchedule(sparsity=0.5).sparsity_at(3), "end is unknown"),
    ],
)
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
