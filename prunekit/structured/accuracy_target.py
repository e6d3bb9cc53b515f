"""Accuracy-bounded pruning: `target={"accuracy_drop": d}` prunes as far as it can while the
measured accuracy stays within d percentage points of the unpruned model's.

Accuracy is not a smooth function of the plan, so the search is over MACs budgets: each candidate
(planned for a MACs fraction m, the scope's own way) is applied to a throwaway copy, given the
quick recovery (BatchNorm recalibration on the calibration batches, where the model has
BatchNorms), and evaluated on the evaluation batches. Bisection on m keeps the smallest budget that
met the bound; every round is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from prunekit.structured.plan import Plan

ROUNDS = 7
LOWEST = 0.02  # the smallest MACs fraction tried


def plan_for_accuracy(
    model: nn.Module,
    bound: float,
    plan_for_cost: Callable[[str, float], tuple[Plan, dict[str, Any]]],
    pruned_copy: Callable[[Plan], nn.Module],
    calibration: Iterable[Any],
    evaluation: Iterable[Any],
    *,
    rounds: int = ROUNDS,
) -> tuple[Plan, dict[str, Any]]:
    """The plan with the fewest MACs whose measured accuracy drop is at most `bound` points."""
    baseline = _accuracy(model, evaluation)
    lo, hi = LOWEST, 1.0
    best: tuple[Plan, dict[str, Any], float] | None = None
    tried: list[dict[str, float]] = []
    for _ in range(rounds):
        macs = (lo * hi) ** 0.5  # geometric midpoint: budgets span orders of magnitude
        plan, info = plan_for_cost("macs", macs)
        candidate = pruned_copy(plan)
        _recover(candidate, calibration)
        accuracy = _accuracy(candidate, evaluation)
        drop = 100.0 * (baseline - accuracy)
        tried.append({"macs_kept": info["predicted_kept"], "accuracy": accuracy, "drop": drop})
        if drop <= bound:
            hi = macs
            if best is None or info["predicted_kept"] < best[1]["predicted_kept"]:
                best = (plan, info, accuracy)
        else:
            lo = macs
    if best is None:  # nothing met the bound: keep every channel
        plan, info = plan_for_cost("macs", 1.0)
        best = (plan, info, baseline)
    plan, info, accuracy = best
    return plan, {
        "target": "accuracy_drop",
        "bound": bound,
        "baseline_accuracy": baseline,
        "accuracy": accuracy,
        "macs_kept": info["predicted_kept"],
        "rounds": tried,
    }


def _accuracy(model: nn.Module, data: Iterable[Any]) -> float:
    from prunekit.train import evaluate

    accuracy = evaluate(model, data)["accuracy"]
    if accuracy != accuracy:  # NaN: outputs are not class scores
        raise ValueError(
            "target accuracy_drop needs classification data: (inputs, class index targets) "
            "batches for which the model outputs class scores"
        )
    return float(accuracy)


def _recover(model: nn.Module, calibration: Iterable[Any]) -> None:
    from prunekit.structured.recovery import recalibrate_bn, tracked_norms

    if tracked_norms(model):
        recalibrate_bn(model, calibration)
