"""Hugging Face conventions prunekit follows without importing transformers."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def takes_use_cache(model: nn.Module) -> bool:
    """Does `model.forward` take `use_cache` (transformers models: a key/value cache)?"""
    try:
        return "use_cache" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def without_cache(model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` plus ``use_cache=False`` when the model takes it and the caller did not say: a
    traced or re-run forward needs the outputs, not a cache object (which no tracer can return)."""
    if "use_cache" in kwargs or not takes_use_cache(model):
        return kwargs
    return {**kwargs, "use_cache": False}
