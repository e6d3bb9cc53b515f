"""Importance criteria: score the channels of each group (higher = more important, kept)."""

from prunekit.importance import magnitude as _magnitude  # noqa: F401 - registers l1, l2, random
from prunekit.importance.base import Importance
from prunekit.importance.registry import get, list, register

__all__ = ["Importance", "get", "list", "register"]
