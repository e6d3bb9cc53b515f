"""Sparsity regularisers for `fit(..., regularizers=[...])`: each is ``reg(model) -> scalar``.

- `bn_l1`: network slimming (Liu et al., 2017), an L1 penalty on the scales of norm layers.
- `group_lasso`: the L2 norm of every channel of every prunable group of a dependency graph,
  summed, so that whole coupled channels are pushed to zero together.

>>> import prunekit as pk
>>> from prunekit.train import fit
>>> graph = pk.trace(model, x)  # doctest: +SKIP
>>> fit(model, data, regularizers=[bn_l1(1e-4), group_lasso(graph, 1e-5)])  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunekit.train._loop import Regularizer

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
)


def _check_weight(weight: float) -> float:
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"regulariser weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


def _norm_scales(model: nn.Module, modules: Sequence[str] | None = None) -> list[nn.Parameter]:
    """The affine scales of the norm layers of `model` (names matching the globs `modules`)."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, NORM_TYPES) or module.weight is None:
            continue
        if modules is None or any(fnmatchcase(name, glob) for glob in modules):
            out.append(module.weight)
    return out


def bn_l1(weight: float, modules: Sequence[str] | None = None) -> Regularizer:
    """``weight * Σ|γ|`` over the scales of BatchNorm/GroupNorm/InstanceNorm/LayerNorm layers.

    `modules` restricts it to module names matching any of these fnmatch globs.
    """
    weight = _check_weight(weight)
    globs = [modules] if isinstance(modules, str) else modules

    def reg(model: nn.Module) -> torch.Tensor:
        scales = _norm_scales(model, globs)
        if not scales:
            where = f" matching {list(globs)}" if globs is not None else ""
            raise ValueError(f"bn_l1: the model has no norm layer with affine scales{where}")
        return weight * sum(s.abs().sum() for s in scales)

    return reg


def group_lasso(graph: DependencyGraph, weight: float) -> Regularizer:
    """``weight * Σ_groups Σ_channels sqrt(Σ_members ||slice||²)`` over `graph`'s groups.

    The parameters are read by name from the model given at call time, so the penalty is
    differentiable w.r.t. the weights being trained. Member slices reach group channels as in
    `group_reduce` (a head of an attention projection, say, spans many rows).
    """
    from prunekit.importance.base import group_reduce  # (lazy: keeps prunekit.train light)

    weight = _check_weight(weight)

    def reg(model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters(remove_duplicate=False))
        _check_shapes(graph, params)
        memo: dict = {}  # per call: several groups share a weight (reduced once)
        total = torch.zeros((), dtype=torch.float64)
        for group in graph.groups:
            sq = group_reduce(graph, group, "group_lasso", torch.square, tensors=params, cache=memo)
            total = total + _safe_sqrt(sq).sum()
        ref = next(iter(params.values()), total)
        return (weight * total).to(device=ref.device, dtype=ref.dtype)

    return reg


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) gradient at 0: an all-zero channel stays put."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def _check_shapes(graph: DependencyGraph, params: dict[str, torch.Tensor]) -> None:
    for group in graph.groups:
        for m in group.members:
            if m.kind != "parameter":
                continue
            p = params.get(m.name)
            if p is None or tuple(p.shape) != graph.param_shapes[m.name]:
                raise ValueError(
                    f"group_lasso: parameter {m.name!r} is missing or has changed shape since "
                    "the graph was traced; trace the model again (prunekit.trace)"
                )
