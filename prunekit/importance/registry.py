"""The importance registry: `register`, `get`, `list` (wildcards), warning on overwrite."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, Any] = {}


def register(name: str, factory: Callable[..., Any] | None = None):
    """Register an importance class/factory under `name` (usable as a decorator)."""

    def wrap(obj: Any) -> Any:
        if name in _REGISTRY and _REGISTRY[name] is not obj:
            warnings.warn(f"overwriting importance {name!r}", stacklevel=2)
        _REGISTRY[name] = obj
        return obj

    return wrap(factory) if factory is not None else wrap


def get(name_or_obj: Any, **kwargs: Any) -> Any:
    """An importance object from a registry name, or the object itself."""
    if not isinstance(name_or_obj, str):
        if not hasattr(name_or_obj, "scores"):
            raise TypeError("importance must be a registered name or an object with .scores()")
        return name_or_obj
    if name_or_obj not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name_or_obj, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown importance {name_or_obj!r}{hint}; choose one of {', '.join(list())}"
        )
    return _REGISTRY[name_or_obj](**kwargs)


def list(pattern: str = "*") -> list[str]:  # noqa: A001 - mirrors timm's list_models
    """Registered importance names matching a wildcard pattern."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
