"""Inputs and outputs of an export check: example inputs from a save, another batch, the error.

The error is the one prunekit uses everywhere (DESIGN §4.1): max|Δ| / max|y_ref| over all outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

from prunekit.graph.graph import inputs_from_specs


def as_args(example_inputs: Any) -> tuple:
    """A tuple of positional inputs (a lone tensor or a list is accepted)."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if isinstance(example_inputs, dict):
        raise TypeError(
            "example_inputs must be a tuple of positional inputs; pass keyword inputs as "
            "example_kwargs={...}"
        )
    return (example_inputs,)


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) value, in pytree order: what an exported graph takes/returns."""
    return [t for t in tree_leaves(value) if isinstance(t, torch.Tensor)]


def from_specs(specs: list[dict[str, Any]], *, seed: int = 0, batch: int | None = None) -> tuple:
    """Example inputs rebuilt from the specs a save records (`prunekit.json` "example_inputs",
    found by `prunekit.io._format.recorded_input_specs`), containers (a dict of inputs) included.

    The structure comes from `prunekit.graph.graph.inputs_from_specs`; float tensors are then
    standard normal (seeded), integer tensors (token ids) 0/1 so that they index any embedding;
    plain values are used as recorded. `batch` replaces the leading size the tensors share.
    """
    for spec in specs:
        _check_spec(spec)
    if batch is not None:
        specs = _at_batch_specs(specs, batch)
    gen = torch.Generator().manual_seed(seed)

    def fill(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if value.is_floating_point():
            return torch.randn(value.shape, generator=gen).to(value.dtype)
        return torch.randint(0, 2, value.shape, generator=gen).to(value.dtype)

    try:
        rebuilt = inputs_from_specs(specs)
    except (TypeError, KeyError, NotImplementedError, AttributeError, ValueError) as e:
        raise ValueError(
            f"the save's example inputs cannot be rebuilt ({e}); pass example_inputs= "
            "(CLI: --input-shape)"
        ) from e
    return tree_map(fill, rebuilt)


def _check_spec(spec: Any) -> None:
    if not isinstance(spec, dict) or not ({"shape", "leaves", "value"} & set(spec)):
        what = spec.get("type", "structured") if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(
            f"the save records a {what} example input that cannot be rebuilt; pass "
            "example_inputs= (CLI: --input-shape)"
        )
    if "shape" in spec:
        name = str(spec.get("dtype", "float32"))
        if not isinstance(getattr(torch, name, None), torch.dtype):
            raise ValueError(
                f"the save records an example input of dtype {spec.get('dtype')!r}; "
                "pass example_inputs= (CLI: --input-shape)"
            )
    for leaf in spec.get("leaves") or []:
        _check_spec(leaf)


def _at_batch_specs(specs: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """The specs with the leading size every tensor shares set to `batch` (unchanged when the
    tensors do not share one)."""

    def leading(spec: dict[str, Any]) -> list[int]:
        if spec.get("shape"):
            return [int(spec["shape"][0])]
        return [n for leaf in spec.get("leaves") or [] for n in leading(leaf)]

    sizes = {n for spec in specs for n in leading(spec)}
    if len(sizes) != 1:
        return specs
    shared = sizes.pop()

    def resized(spec: dict[str, Any]) -> dict[str, Any]:
        if spec.get("shape") and int(spec["shape"][0]) == shared:
            return {**spec, "shape": [batch, *spec["shape"][1:]]}
        if "leaves" in spec:
            return {**spec, "leaves": [resized(leaf) for leaf in spec["leaves"]]}
        return spec

    return [resized(spec) for spec in specs]


def batch_size(args: tuple, kwargs: dict) -> int | None:
    """The leading size shared by every input tensor, or None when they disagree."""
    sizes = {t.shape[0] for t in tensors_of((args, kwargs)) if t.dim()}
    return sizes.pop() if len(sizes) == 1 else None


def at_batch(args: tuple, kwargs: dict, batch: int, *, seed: int = 1) -> tuple[tuple, dict]:
    """The inputs at another batch size: rows repeated, floats perturbed so rows differ."""
    shared = batch_size(args, kwargs)
    if shared is None:
        return args, kwargs
    gen = torch.Generator().manual_seed(seed)

    def widen(v: Any) -> Any:
        if not (isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == shared):
            return v
        index = torch.arange(batch) % shared
        out = v[index]
        if out.is_floating_point():
            noise = torch.randn(out.shape, generator=gen).to(out.dtype)
            out = out + 0.1 * noise * out.detach().float().std().clamp_min(1e-3).to(out.dtype)
        return out

    return tree_map(widen, args), tree_map(widen, kwargs)


def other_batch(batch: int) -> int:
    """A batch size different from `batch` for the dynamic-batch check."""
    return 3 if batch != 3 else 2


def errors(reference: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    """(max|Δ|, max|Δ| / max|y_ref|) over all outputs; inf when the structure differs."""
    if len(reference) != len(got):
        return float("inf"), float("inf")
    worst = 0.0
    scale = 0.0
    for ref, out in zip(reference, got, strict=True):
        if tuple(ref.shape) != tuple(out.shape):
            return float("inf"), float("inf")
        if ref.numel() == 0:
            continue
        ref64, out64 = ref.detach().double().cpu(), out.detach().double().cpu()
        if not torch.isfinite(out64).all() and not torch.equal(ref64.isnan(), out64.isnan()):
            return float("inf"), float("inf")
        diff = (ref64 - out64).abs().nan_to_num(0.0)
        worst = max(worst, float(diff.max()))
        scale = max(scale, float(ref64.abs().nan_to_num(0.0).max()))
    return worst, worst / max(scale, 1e-12)
