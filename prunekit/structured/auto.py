"""`scope="auto"`: per-group ratios chosen from measured sensitivity, under a cost budget.

Uniform ratios wreck sensitive groups and spare redundant ones; global ranking compares scores
across layers that are not on one scale. Here every group is pruned alone at a grid of ratios and
the loss on the calibration batches is measured (`prunekit.sensitivity`; with `recalibrate`,
after re-measuring the BatchNorm statistics on those batches, since fine-tuning repairs a shift of
the statistics but not what the channels carried); with each group's cost
saving at each ratio (from the cost model), a greedy allocation repeatedly takes the cheapest
accuracy for the most cost: among all groups, the move to a larger ratio with the smallest loss
increase per unit of cost saved (over the convex hull of each curve, so a flat stretch after a
bump is seen), until the budget is met. The result is then moved channel by channel to the exact
target like every other target. Deterministic for given data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunekit._copy import deep_copy
from prunekit.structured.cost import CostModel
from prunekit.structured.plan import Plan
from prunekit.structured.planner import (
    active_groups,
    active_ties,
    local_plan,
    override_ratios,
    rounding,
)
from prunekit.structured.recovery import recalibrate_bn, tracked_norms
from prunekit.structured.surgery import keep_masks
from prunekit.structured.targets import TOLERANCE, _refine

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EPSILON = 1e-4  # loss increase treated as free below this, so ties prefer larger savings


def plan_auto(
    model: nn.Module,
    graph: DependencyGraph,
    scores: dict[str, torch.Tensor],
    key: str,
    value: float,
    plan_kwargs: dict[str, Any],
    data: Any,
    *,
    batches: int = 4,
    progress: bool = False,
    cost: Callable[[dict], float] | None = None,
    recalibrate: bool = False,
) -> tuple[Plan, dict[str, Any]]:
    """The plan meeting `{key: value}` (fraction of MACs/params kept) with the least predicted
    loss increase. `data` are calibration batches (the first `batches` are used). `cost(keep)`
    replaces the MACs/params count (`key` then only names it), e.g. a latency model's
    milliseconds: the budget is then met on the grid, without channel-by-channel refinement.
    `recalibrate`: measure each candidate's loss after re-measuring its BatchNorm statistics."""
    if data is None:
        raise ValueError(
            "scope='auto' measures each group's sensitivity, so it needs data=: a few "
            "(inputs, targets) calibration batches"
        )
    counts = CostModel(graph)
    measure = cost or (counts.macs if key == "macs" else counts.params)
    dense = measure({})
    active = active_groups(graph, plan_kwargs.get("ignore"), plan_kwargs.get("attention", "dims"))
    fixed = override_ratios(graph, plan_kwargs.get("overrides"), active)  # the user's ratios
    active = [g for g in active if g.key not in fixed]
    max_ratio = plan_kwargs.get("max_ratio", 0.95)
    grid = [r for r in GRID if r <= max_ratio]
    round_to = plan_kwargs.get("round_to")
    groups = tuple(g.key for g in active)
    memo = ("auto-curves", id(data), tuple(grid), batches, round_to, groups, recalibrate)
    if memo not in graph.cache:  # a latency target plans several MACs budgets on one graph
        graph.cache[memo] = _loss_curves(
            model, graph, scores, active, grid, data, batches, progress, round_to, recalibrate
        )
    curves = graph.cache[memo]

    ties = active_ties(graph, active)
    steps = rounding(graph, round_to)

    def kept_of(ratios: dict[str, float], tied: list[list[str]] = ties) -> float:
        plan = Plan(local_plan(graph.groups, scores, {**fixed, **ratios}, steps, tied))
        return measure(keep_masks(graph, plan)) / dense

    savings = {g.key: [0.0] + [1.0 - kept_of({g.key: r}, []) for r in grid] for g in active}
    ratios = _greedy(curves, savings, [0.0, *grid], lambda r: kept_of(r) <= value)
    ratios.update(fixed)
    groups = local_plan(graph.groups, scores, ratios, steps, ties)
    plan = Plan(groups=groups, inputs=list(graph.input_specs))
    kept = kept_of(ratios)
    if cost is None and abs(kept - value) > TOLERANCE * value:

        def kept_fraction(p: Plan) -> float:
            return measure(keep_masks(graph, p)) / dense

        plan, kept = _refine(graph, scores, plan, kept_fraction, value, plan_kwargs)
    info = {
        "target": key,
        "target_kept": value,
        "predicted_kept": kept,
        "macs_kept": counts.macs(keep_masks(graph, plan)) / counts.macs({}),
        "dense": dense,
        "auto": {
            "ratios": {k: round(v, 4) for k, v in ratios.items() if v},
            "grid": grid,
            "loss_curves": {k: [round(x, 5) for x in v] for k, v in curves.items()},
        },
    }
    return plan, info


def _loss_curves(
    model, graph, scores, groups, grid, data, batches, progress, round_to, recalibrate
):
    """Per group: loss increase over the unpruned model at ratio 0 and every grid ratio,
    made non-decreasing (removing more channels is never credited with helping)."""
    from prunekit.structured.sensitivity import _metric, _take, measure_alone

    plans = {
        r: Plan(
            local_plan(graph.groups, scores, {g.key: r for g in groups}, rounding(graph, round_to)),
            inputs=list(graph.input_specs),
        )
        for r in grid
    }
    evaluation = _take(data, batches)
    score = (
        _recalibrated(_metric("loss")) if recalibrate and tracked_norms(model) else _metric("loss")
    )
    baseline, measured = measure_alone(model, graph, plans, evaluation, score, progress)
    curves: dict[str, list[float]] = {}
    for g in measured:
        rises = [0.0] + [max(0.0, g.drop(baseline, r)) for r in grid]
        for i in range(1, len(rises)):
            rises[i] = max(rises[i], rises[i - 1])
        curves[g.key] = rises
    for g in groups:  # groups too small to lose a channel on the grid
        curves.setdefault(g.key, [0.0] * (len(grid) + 1))
    return curves


def _recalibrated(score):
    """`score` of a copy whose BatchNorm statistics are re-measured on the same batches: what a
    candidate keeps once its statistics are repaired, not the shift itself (Li et al. 2020,
    EagleEye's adaptive BatchNorm)."""

    def recalibrated(model, batches):
        twin = deep_copy(model)  # the baseline is scored too, on the model itself
        recalibrate_bn(twin, batches)
        return score(twin, batches)

    return recalibrated


def _greedy(
    curves: dict[str, list[float]],
    savings: dict[str, list[float]],
    grid: list[float],
    reached: Callable[[dict[str, float]], bool],
) -> dict[str, float]:
    """Grid index per group, advanced by the best loss-per-saving move until `reached`."""
    at = dict.fromkeys(curves, 0)

    def ratios() -> dict[str, float]:
        return {k: grid[i] for k, i in at.items()}

    while not reached(ratios()):
        best: tuple[float, str, int] | None = None
        for k, i in at.items():
            for j in range(i + 1, len(grid)):
                gain = savings[k][j] - savings[k][i]
                if gain <= 0:
                    continue
                price = (max(curves[k][j] - curves[k][i], 0.0) + EPSILON) / gain
                if best is None or price < best[0]:
                    best = (price, k, j)
        if best is None:
            break  # every group at its cap: the budget cannot be met by this grid
        at[best[1]] = best[2]
    return ratios()
