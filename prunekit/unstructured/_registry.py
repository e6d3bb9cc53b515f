"""A small named registry (`register` / `get` / `list` with wildcards, warning on overwrite)."""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable
from typing import Any


class Registry:
    """Names -> factories, e.g. ``prunekit.unstructured.importances`` and ``.scopes``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, factory: Callable[..., Any] | None = None) -> Any:
        """Register `factory` under `name` (usable as a decorator); warns on overwrite."""

        def wrap(obj: Any) -> Any:
            if name in self._items and self._items[name] is not obj:
                warnings.warn(f"overwriting {self.kind} {name!r}", stacklevel=3)
            self._items[name] = obj
            return obj

        return wrap(factory) if factory is not None else wrap

    def get(self, name: str) -> Any:
        """The factory registered under `name` (ValueError naming the valid choices)."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} must be a name (str), got {type(name).__name__}")
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"unknown {self.kind} {name!r}{hint}; choose one of {', '.join(self.list())}"
            )
        return self._items[name]

    def list(self, pattern: str = "*") -> list[str]:  # noqa: A003 - mirrors timm's list_models
        """Registered names matching a wildcard pattern, sorted."""
        return sorted(n for n in self._items if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items
