"""Inputs and outputs of an export check: example inputs from a save, another batch, the error.

The error is the one prunekit uses everywhere (DESIGN §4.1): max|Δ| / max|y_ref| over all outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_leaves, tree_map

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


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


def from_specs(specs: list[dict[str, Any]], *, seed: int = 0) -> tuple:
    """Example inputs rebuilt from the specs a save records (`prunekit.json` "example_inputs").

    Float tensors are standard normal, integer tensors (token ids) 0/1 so that they index any
    embedding; plain values are used as recorded.
    """
    gen = torch.Generator().manual_seed(seed)
    args: list[Any] = []
    for spec in specs:
        if "value" in spec:
            args.append(spec["value"])
            continue
        if "shape" not in spec:
            raise ValueError(
                f"the save records a {spec.get('type', 'structured')} example input that cannot "
                "be rebuilt; pass example_inputs= (CLI: --input-shape)"
            )
        dtype = _DTYPES.get(str(spec.get("dtype", "float32")))
        if dtype is None:
            raise ValueError(
                f"the save records an example input of dtype {spec.get('dtype')!r}; "
                "pass example_inputs= (CLI: --input-shape)"
            )
        shape = [int(d) for d in spec["shape"]]
        if dtype.is_floating_point:
            args.append(torch.randn(shape, generator=gen).to(dtype))
        else:
            args.append(torch.randint(0, 2, shape, generator=gen).to(dtype))
    return tuple(args)


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
