"""Meet a cost budget: `target={"macs": f}` / `{"params": f}` is the fraction of the cost KEPT.

A uniform (or global) removal ratio is bisected until the predicted cost is close, then single
channels are removed or restored greedily (lowest normalised score first) until the prediction is
within 0.5% of the target. Predictions come from `CostModel`; the real cost is measured after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from prunekit.structured.cost import CostModel
from prunekit.structured.plan import Plan
from prunekit.structured.planner import (
    active_groups,
    active_ties,
    build_plan,
    min_kept,
    override_ratios,
    plan_from_counts,
    rounding,
    set_tied,
)
from prunekit.structured.surgery import keep_masks

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

TOLERANCE = 0.005  # relative, on the predicted cost; the promise to users is 2% measured


def plan_for_target(
    graph: DependencyGraph,
    scores: dict[str, torch.Tensor],
    key: str,
    value: float,
    plan_kwargs: dict[str, Any],
) -> tuple[Plan, dict[str, Any]]:
    cost = CostModel(graph)
    measure = cost.macs if key == "macs" else cost.params
    dense = measure({})

    def kept_fraction(p: Plan) -> float:
        return measure(keep_masks(graph, p)) / dense

    lo, hi = 0.0, 0.99
    best_plan, best = build_plan(graph, scores, 0.0, **plan_kwargs), 1.0
    for _ in range(25):
        mid = (lo + hi) / 2
        candidate = build_plan(graph, scores, mid, **plan_kwargs)
        kept = kept_fraction(candidate)
        if abs(kept - value) < abs(best - value):
            best_plan, best = candidate, kept
        if abs(kept - value) <= TOLERANCE * value:
            break
        lo, hi = (mid, hi) if kept > value else (lo, mid)
    if abs(best - value) > TOLERANCE * value:
        best_plan, best = _refine(graph, scores, best_plan, kept_fraction, value, plan_kwargs)
    info = {"target": key, "target_kept": value, "predicted_kept": best, "dense": dense}
    return best_plan, info


def _refine(graph, scores, plan: Plan, kept_fraction, value: float, plan_kwargs, steps: int = 400):
    """Move one channel (or one `round_to` step, see `rounding`) at a time toward the target."""
    rounded = rounding(graph, plan_kwargs.get("round_to"))
    max_ratio = plan_kwargs.get("max_ratio", 0.95)
    active = {
        g.key: g
        for g in active_groups(
            graph, plan_kwargs.get("ignore"), plan_kwargs.get("attention", "dims")
        )
    }
    fixed = override_ratios(graph, plan_kwargs.get("overrides"), list(active.values()))
    active = {k: g for k, g in active.items() if k not in fixed}  # the user's ratios stay
    partners = {k: tie for tie in active_ties(graph, list(active.values())) for k in tie}
    sizes = {k: g.size for k, g in active.items()}
    # a tied group moves by its share of one step of the tie's smallest group
    unit = {k: sizes[k] // min(sizes[j] for j in partners.get(k, [k])) for k in active}
    step = {k: rounded.get(min(partners.get(k, [k]), key=sizes.get), 1) for k in active}
    counts = {g.key: len(g.keep) for g in plan.groups}
    norm = {k: _sorted_normalised(scores[k]) for k in active}
    kept = kept_fraction(plan)
    best = (abs(kept - value), plan, kept)
    for _ in range(steps):
        if abs(kept - value) <= TOLERANCE * value:
            break
        if kept > value:  # remove the weakest next channel anywhere
            options = [
                (norm[k][g.size - counts[k]], k)
                for k, g in active.items()
                if counts[k] - step[k] * unit[k] >= max(unit[k], min_kept(g.size, max_ratio))
            ]
            if not options:
                break
            _, k = min(options)
            counts[k] -= step[k] * unit[k]
        else:  # restore the strongest removed channel
            options = [
                (norm[k][g.size - counts[k] - 1], k)
                for k, g in active.items()
                if counts[k] + step[k] * unit[k] <= g.size
            ]
            if not options:
                break
            _, k = max(options)
            counts[k] += step[k] * unit[k]
        if k in partners:  # ties move together
            set_tied(counts, partners[k], sizes, counts[k] // unit[k])
        plan = plan_from_counts(graph, scores, counts)
        kept = kept_fraction(plan)
        if abs(kept - value) < best[0]:
            best = (abs(kept - value), plan, kept)
    return best[1], best[2]


def _sorted_normalised(s: torch.Tensor) -> list[float]:
    """Scores normalised by their mean, ascending, padded so any index is valid."""
    s = s.double()
    values = sorted((s / (s.mean() + 1e-12)).tolist())
    return values + [float("inf")]
