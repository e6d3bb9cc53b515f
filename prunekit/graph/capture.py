"""Capture a model as an ATen graph with `torch.export` (non-strict, dynamic batch when possible).

We pin the default export IR (high-level ATen ops such as ``aten.conv2d``, ``aten.linear``,
``aten.layer_norm``, ``aten.scaled_dot_product_attention``); the rule table is written for it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from prunekit._copy import deep_copy
from prunekit._hf import without_cache
from prunekit.graph.record import RecordedProgram, RecordingError, record


def as_input_tuple(example_inputs: Any) -> tuple:
    """Normalise `example_inputs` to a tuple (a lone tensor is accepted)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, dict):
        raise TypeError(
            "example_inputs must be a tuple of positional inputs; pass keyword inputs "
            "as example_kwargs={...}"
        )
    raise TypeError(
        f"example_inputs must be a tensor or a tuple of tensors, not {type(example_inputs).__name__}"
    )


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    sizes = {
        t.shape[0] for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor) and t.dim()
    }
    return sizes.pop() if len(sizes) == 1 else None


def at_batch(args: tuple, kwargs: dict, batch: int) -> tuple[tuple, dict]:
    """The inputs cut to their first `batch` examples (tensors sharing the batch dim only)."""
    shared = _batch_size(args, kwargs)
    if shared is None:
        return args, kwargs

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == shared:
            return v[:batch]
        return v

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _widen_batch(value: Any, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
        return torch.cat([value, value]) if batch == 1 else value
    return value


def _dynamic_shapes(args: tuple, kwargs: dict, batch: int) -> tuple:
    dim = Dim("batch")

    def spec(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch:
            return {0: dim}
        return None

    return tuple(spec(a) for a in args), {k: spec(v) for k, v in kwargs.items()}


CAPTURE_METHODS = ("auto", "record", "export")


def capture(
    model: nn.Module,
    example_inputs: Any,
    example_kwargs: dict | None = None,
    method: str = "auto",
) -> tuple[ExportedProgram | RecordedProgram, tuple, dict]:
    """Capture `model`'s ATen graph: recorded on meta tensors (fast) or exported.

    `method="auto"` records (see `record.py`) and falls back to `torch.export` when recording
    refuses the model; "record" and "export" force one. Returns the program and the inputs it runs
    with (batch widened to 2 when it was 1).
    """
    if method not in CAPTURE_METHODS:
        raise ValueError(f"capture must be one of {CAPTURE_METHODS}, not {method!r}")
    args = as_input_tuple(example_inputs)
    kwargs = without_cache(model, dict(example_kwargs or {}))
    if method != "export":
        batch = _batch_size(args, kwargs)
        try:
            program = record(model, args, kwargs, batch)
        except RecordingError:
            if method == "record":
                raise
        else:
            wide_args = tuple(_widen_batch(a, batch) for a in args)
            return program, wide_args, {k: _widen_batch(v, batch) for k, v in kwargs.items()}
    return export(model, args, kwargs)


def export(
    model: nn.Module, example_inputs: Any, example_kwargs: dict | None = None
) -> tuple[ExportedProgram, tuple, dict]:
    """Export a deep copy of `model` (tracing may have side effects on the original).

    Returns the program and the inputs it was exported with (batch widened to 2 when it was 1).
    The model is exported in eval mode (dropout off, BatchNorm on running statistics).
    The batch dimension is made dynamic so that integer literals in reshapes are channel sizes,
    not batch sizes; models that refuse a dynamic batch are exported with static shapes.
    """
    args = as_input_tuple(example_inputs)
    kwargs = without_cache(model, dict(example_kwargs or {}))
    twin = deep_copy(model).eval()
    errors = []
    batch = _batch_size(args, kwargs)
    attempts = []
    if batch is not None:
        wide_args = tuple(_widen_batch(a, batch) for a in args)
        wide_kwargs = {k: _widen_batch(v, batch) for k, v in kwargs.items()}
        dyn_args, dyn_kwargs = _dynamic_shapes(wide_args, wide_kwargs, max(batch, 2))
        attempts.append((wide_args, wide_kwargs, (*dyn_args, dyn_kwargs) if kwargs else dyn_args))
    attempts.append((args, kwargs, None))
    for a, k, dyn in attempts:
        try:
            with warnings.catch_warnings(), _quiet_export():
                warnings.simplefilter("ignore")
                if dyn is not None and k:
                    # dynamic_shapes mirrors the call: positional specs then the kwargs dict
                    dyn = {**_named_specs(twin, dyn[:-1]), **dyn[-1]}
                ep = torch.export.export(twin, a, k, dynamic_shapes=dyn, strict=False)
                return ep, a, k
        except Exception as exc:  # noqa: BLE001 - we report every attempt below
            errors.append(exc)
    last = errors[-1]
    if "DataDependent" in type(last).__name__:
        raise ValueError(
            f"torch.export could not capture the model: its forward branches on the values of a "
            f"tensor{_call_site(last)} (e.g. `if x.sum() > 0:`, or box post-processing such as "
            f"NMS), which a graph cannot hold; prune a submodule without such branches"
            f"{_submodule_hint(model)}, or write the branch with torch.where"
        ) from last
    raise ValueError(
        f"torch.export could not capture the model ({type(last).__name__}: "
        f"{str(last).splitlines()[0][:300]}); check that example_inputs fit the model, "
        "or prune an exportable submodule instead"
    ) from last


def _call_site(error: BaseException) -> str:
    """` at file.py:line` of the user code torch names in `error`, or ''."""
    text = str(error)
    frames = re.findall(r'File "([^"]+)", line (\d+)', text)
    if frames:
        return f" at {Path(frames[-1][0]).name}:{frames[-1][1]}"
    cause = re.findall(r"Caused by: \(([^():]+):(\d+) in (\w+)\)", text)  # data-dependent guards
    return f" at {Path(cause[-1][0]).name}:{cause[-1][1]} ({cause[-1][2]})" if cause else ""


def _submodule_hint(model: nn.Module) -> str:
    """` (e.g. model.backbone)` when the model has a feature extractor of that name."""
    for name in ("backbone", "features", "encoder"):
        if isinstance(getattr(model, name, None), nn.Module):
            return f" (e.g. model.{name})"
    return ""


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """torch's loggers below ERROR and its stderr muted while exporting: a failed attempt logs
    and prints its partial graph's source (several times) before the error we report in one
    line."""
    names = ["torch", *(n for n in logging.root.manager.loggerDict if n.startswith("torch."))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _named_specs(model: nn.Module, specs: tuple) -> dict:
    import inspect

    params = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return dict(zip(params, specs))
