"""Proof of correctness: the pruned model equals the original with the removed channels deleted.

One definition, used everywhere (DESIGN §4.1): parameters and buffers are randomised first, so
that slicing mistakes cannot hide behind zeros and ones; the error is max|Δ| / max|y_ref| over all
outputs; the check passes at <= 1e-4. A model that misses it in its own precision (float16,
float32) is checked again in float64, where rounding cannot hide or fake a difference.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from prunekit._copy import deep_copy
from prunekit._source import is_library_file
from prunekit.structured.masked import masked_reference

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

TOLERANCE = 1e-4


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every floating parameter and buffer with seeded random values of a sane scale.

    Matrices get N(0, 1/fan_in) (activations neither vanish nor explode through deep stacks);
    vectors (norm scales, biases) and buffers (running statistics) get U(0.5, 1.5), positive so
    that variances stay valid.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            _fill(p, gen)
        for _, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=torch.float32).to(b))
    return model


def _fill(p: torch.Tensor, gen: torch.Generator) -> None:
    if not p.is_floating_point():
        return
    if p.dim() >= 2:
        fan_in = max(1, p[0].numel())
        value = torch.randn(p.shape, generator=gen) / fan_in**0.5
    else:
        value = 0.5 + torch.rand(p.shape, generator=gen)
    p.copy_(value.to(p))


def relative_error(actual: Any, expected: Any) -> float:
    """max|a - e| / max|e| over all tensor leaves (inf when structures or shapes differ)."""
    a_leaves = [t for t in pytree.tree_leaves(actual) if isinstance(t, torch.Tensor)]
    e_leaves = [t for t in pytree.tree_leaves(expected) if isinstance(t, torch.Tensor)]
    if len(a_leaves) != len(e_leaves):
        return float("inf")
    num, den = 0.0, 0.0
    for a, e in zip(a_leaves, e_leaves):
        if a.shape != e.shape:
            return float("inf")
        if not e.is_floating_point():
            if not torch.equal(a, e):
                return float("inf")
            continue
        diff = (a.double() - e.double()).abs()
        if torch.isnan(diff).any():
            return float("inf")
        num = max(num, float(diff.max()) if diff.numel() else 0.0)
        den = max(den, float(e.double().abs().max()) if e.numel() else 0.0)
    return num / den if den > 0 else num


def verification_inputs(graph: DependencyGraph, seed: int = 0) -> tuple[tuple, dict]:
    """Random floating inputs shaped like the export inputs; integer inputs (token ids) kept."""
    gen = torch.Generator().manual_seed(seed + 1)

    def fresh(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            return torch.randn(v.shape, generator=gen).to(v)
        return v

    # the export's inputs: a batch of at least 2 (the exported batch range starts there)
    args, kwargs = graph.export_args, graph.export_kwargs
    return tuple(fresh(a) for a in args), {k: fresh(v) for k, v in kwargs.items()}


def tensors_by_name(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = p.detach()
    for name, b in model.named_buffers(remove_duplicate=False):
        out[name] = b
    return out


def reference_outputs(graph, model, keep, args, kwargs) -> list[torch.Tensor]:
    return masked_reference(graph, tensors_by_name(model), args, kwargs, keep)


def run_model(model: nn.Module, args: tuple, kwargs: dict, forward_fn=None) -> list[Any]:
    with torch.no_grad():
        out = forward_fn(model, args) if forward_fn is not None else model(*args, **kwargs)
    return [t.detach() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _eval(model: nn.Module) -> nn.Module:
    """Eval mode where allowed (modules of exported programs refuse `.eval()`; they are already)."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def verify_candidate(
    graph: DependencyGraph,
    model: nn.Module,
    keep: dict[int, torch.Tensor],
    apply_fn,
    seed: int = 0,
) -> tuple[float, str | None]:
    """Randomise a copy of `model`, prune it with `apply_fn(copy)`, compare with the reference.

    Returns (relative error, None), or (inf, where and why) when the pruned copy cannot run.
    """
    pruned, args, kwargs, expected = _pruned_and_expected(graph, model, keep, apply_fn, seed)
    try:
        actual = run_model(pruned, args, kwargs)
    except Exception as error:  # noqa: BLE001 - a pruned model that cannot run is simply wrong
        return float("inf"), failure_summary(error)
    error = relative_error(actual, expected)
    if error > TOLERANCE:  # ran, but differs (or overflowed)
        error = min(error, _error_in_float64(graph, model, keep, apply_fn, seed))
    return error, None


def _error_in_float64(graph: DependencyGraph, model: nn.Module, keep, apply_fn, seed: int) -> float:
    """The same check in float64, for a model that missed the tolerance in its own precision:
    a float16 model misses it by rounding alone, and so does a float32 one that amplifies its
    randomised activations (StarNet's products of branches reach 1e9, deeper ones overflow).
    inf when the model or its graph does not run in float64."""
    if all(p.dtype == torch.float64 for p in model.parameters() if p.is_floating_point()):
        return float("inf")  # already checked in float64
    try:
        pruned, args, kwargs, expected = _pruned_and_expected(
            graph, model, keep, apply_fn, seed, float64=True
        )
        actual = run_model(pruned, args, kwargs)
    except Exception:  # noqa: BLE001 - no float64 proof; the float32 error stands
        return float("inf")
    return relative_error(actual, expected)


def _pruned_and_expected(graph, model, keep, apply_fn, seed: int, *, float64: bool = False):
    """A randomised copy of `model` (in float64 on request) pruned by `apply_fn`, in eval mode;
    the verification inputs; and the reference outputs with the removed channels deleted."""
    twin = deep_copy(model)
    twin = randomize_((twin.double() if float64 else twin).eval(), seed)
    args, kwargs = verification_inputs(graph, seed)
    if float64:
        args, kwargs = pytree.tree_map_only(
            torch.Tensor, lambda t: t.double() if t.is_floating_point() else t, (args, kwargs)
        )
    expected = reference_outputs(graph, twin, keep, args, kwargs)
    return _eval(apply_fn(twin)), args, kwargs, expected


def failure_summary(error: BaseException) -> str:
    """`file.py:line: Error: message` at the innermost frame outside torch and prunekit (the
    model's code)."""
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if not is_library_file(f.filename)
    ]
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else ""
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}: " if frames else ""
    return f"{where}{type(error).__name__}: {message}"
