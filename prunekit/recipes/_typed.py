"""Typed conversion between plain data (parsed YAML) and config dataclasses.

Every error names the dotted path of the offending key and says how to fix it, e.g.
``prune.ratoi: unknown key (did you mean 'ratio'?)``. Only the types the recipe dataclasses use
are supported: bool, int, float, str, None, ``X | None``, ``list[X]``, ``dict[str, X]``,
``Literal[...]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class RecipeError(ValueError):
    """A recipe that cannot be read: the message starts with the dotted path of the bad key."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        where = f"{path}: " if path else ""
        super().__init__(f"recipe error: {where}{problem}")


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true/false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    kind = {dict: "mapping", list: "list", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )
    return f"{text} ({kind})"


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the type `tp` and build dataclasses; raise RecipeError on mismatch."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise RecipeError(path, f"must not be null: expected {_type_name(tp)}")
        errors: list[RecipeError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, path)
            except RecipeError as err:
                errors.append(err)
        # One non-null alternative: its own message is the most precise.
        if len(errors) == 1:
            raise errors[0]
        # A mapping given for a dataclass alternative: report the nested problem, not the union.
        nested = [e for e in errors if e.path != path]
        if nested:
            raise nested[0]
        raise RecipeError(path, f"expected {_type_name(tp)}, got {_describe(value)}")
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        hint = _did_you_mean(str(value), [str(c) for c in choices])
        raise RecipeError(
            path, f"expected one of {', '.join(map(repr, choices))}, got {_describe(value)}{hint}"
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RecipeError(path, f"expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise RecipeError(path, f"expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise RecipeError(path, f"expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise RecipeError(path, f"expected a string, got {_describe(value)} (quote it in YAML)")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise RecipeError(path, f"expected a list, got {_describe(value)}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [convert(item_tp, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(path, f"expected a mapping, got {_describe(value)}")
        _key_tp, val_tp = get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecipeError(_join(path, str(k)), "keys must be strings")
            out[k] = convert(val_tp, v, _join(path, k))
        return out
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    raise TypeError(f"unsupported recipe field type {tp!r} at {path}")  # a bug, not user input


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@typing.no_type_check
def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise RecipeError(path, f"expected a mapping, got {_describe(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        key_path = _join(path, str(key))
        if key not in fields:
            allowed = ", ".join(fields)
            hint = _did_you_mean(str(key), list(fields))
            raise RecipeError(
                key_path,
                f"unknown key{hint or ''}" + ("" if hint else f"; allowed keys: {allowed}"),
            )
        kwargs[key] = convert(hints[key], value, key_path)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(_join(path, missing[0]), "required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check is not None:
        check(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclasses (nested) -> plain YAML/JSON-ready data, in field order."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
