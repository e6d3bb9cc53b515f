"""Dependency graph: trace a model and find the groups of channels that must be pruned together."""

from prunekit.graph.dependency import BlockedOp, Group, Member
from prunekit.graph.graph import DependencyGraph, trace
from prunekit.graph.rules import list_rules, register_rule

__all__ = [
    "BlockedOp",
    "DependencyGraph",
    "Group",
    "Member",
    "list_rules",
    "register_rule",
    "trace",
]
