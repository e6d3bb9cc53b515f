"""Structured pruning: plan which channels to keep, remove the rest physically, prove it."""

from prunekit.structured.api import (
    PruneResult,
    UnmetTargetWarning,
    VerificationError,
    apply,
    plan,
    prune,
)
from prunekit.structured.plan import Plan, PlanGroup

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
