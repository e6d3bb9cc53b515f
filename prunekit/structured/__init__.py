"""Structured pruning: plan which channels to keep, remove the rest physically, prove it."""

from prunekit.structured.api import PruneResult, VerificationError, apply, plan, prune
from prunekit.structured.plan import Plan, PlanGroup
from prunekit.structured.reached import UnmetTargetWarning

__all__ = [
    "Plan",
    "PlanGroup",
    "PruneResult",
    "UnmetTargetWarning",
    "VerificationError",
    "apply",
    "plan",
    "prune",
]
