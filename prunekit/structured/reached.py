"""Was a cost target met? Marked in the plan's report, and warned about (with the reason) when
not: a silently missed budget is a wrong answer."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from prunekit.structured.latency_target import TOLERANCE as LATENCY_TOLERANCE
from prunekit.structured.planner import active_groups, min_kept

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph
    from prunekit.structured.plan import Plan


class UnmetTargetWarning(UserWarning):
    """`pk.prune` could not meet a cost target; the result is the closest it found."""


def check_reached(
    info: dict[str, Any], graph: DependencyGraph, plan: Plan, plan_kwargs: dict[str, Any]
) -> None:
    """Mark in `info` (a plan's target report) whether its cost target was met (2%, latency 5%,
    relative), and warn when it was not."""
    key, value = info.get("target"), info.get("target_kept")
    reached = info.get("measured_kept", info.get("predicted_kept"))
    if key not in ("macs", "params", "latency") or value is None or reached is None:
        return
    info["met"] = _within(key, reached, value)
    if info["met"]:
        return
    if key == "latency":
        why = f"it is the closest of the {len(info.get('rounds', []))} candidates measured"
    elif reached > value and _at_floor(graph, plan, plan_kwargs):
        why = f"pruning cannot go further: {why_no_further(graph, plan_kwargs['max_ratio'])}"
    else:
        why = (
            "the channel counts move the cost in steps too coarse for it (small groups, "
            "round_to, or groups tied to keep one head size)"
        )
    _warn_unmet(key, value, reached, why)


def why_no_further(graph: DependencyGraph, max_ratio: float) -> str:
    why = (
        f"every group keeps at least {1 - max_ratio:.0%} of its channels (max_ratio)"
        if graph.groups
        else "no channel group of this model can be pruned"
    )
    blocked = len(graph.blocked_ops)
    if blocked:
        why += f"; {blocked} op(s) block pruning (see pk.trace(...).summary())"
    kept = graph.kept_whole()
    if kept:
        why += "; channels kept whole: " + ", ".join(f"{r} ({n})" for r, n in kept.items())
    return why


def _at_floor(graph: DependencyGraph, plan: Plan, kwargs: dict[str, Any]) -> bool:
    """True when no group that may lose channels can lose one more (max_ratio)."""
    active = {g.key for g in active_groups(graph, kwargs["ignore"], kwargs["attention"])}
    return all(
        len(g.keep) <= min_kept(g.size, kwargs["max_ratio"]) for g in plan.groups if g.key in active
    )


COST_TOLERANCE = 0.02  # relative: the promise for MACs and params targets


def _within(key: str, reached: float, value: float) -> bool:
    tolerance = LATENCY_TOLERANCE if key == "latency" else COST_TOLERANCE
    return abs(reached - value) <= tolerance * value


def _warn_unmet(key: str, value: float, reached: float, why: str) -> None:
    warnings.warn(
        f"target {{'{key}': {value:g}}} not reached: the pruned model keeps {reached:.3f} of the "
        f"{key}; {why}",
        UnmetTargetWarning,
        stacklevel=5,
    )


def check_steps_reached(key: str, value: float, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The steps' target as a whole (each step keeps a fraction of the one before): the kept
    fraction and whether it is met, as a target report; warns once when it is missed."""
    info: dict[str, Any] = {"target": key, "target_kept": value, "steps": len(rounds)}
    reached = 1.0
    for report in rounds:
        step = report.get("target") or {}
        kept = step.get("measured_kept", step.get("predicted_kept"))
        if kept is None:
            return info
        reached *= kept
    info["kept"] = reached
    info["met"] = _within(key, reached, value)
    if not info["met"]:
        _warn_unmet(key, value, reached, "the steps together missed it")
    return info
