"""Scopes: how many units (weights or blocks) each layer loses for a target sparsity.

name    rule                                                                   reference
------  ---------------------------------------------------------------------  ------------------
global  one threshold on the raw scores of every layer                         Han et al. 2015
local   every layer loses the same fraction                                    (uniform)
std     threshold = quality x the layer's weight std (on score / std(W))       Han et al. 2015
lamp    one threshold on LAMP scores s_i^2 / sum_{s_j >= s_i} s_j^2            Lee et al. 2021
erk     densities proportional to (sum of dims) / (product of dims), capped    Evci et al. 2020
        at 1 (Erdos-Renyi-Kernel)

Each scope returns per-layer counts that add up to ``round(sparsity x units)`` exactly (ties by
index), except that a layer never loses fewer units than it has already lost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prunekit.importance.lamp import lamp_scores
from prunekit.unstructured._registry import Registry

scopes = Registry("scope")


@dataclass
class LayerUnits:
    """What a scope sees of one layer: unit `scores` ``[rows, cols]`` (higher = kept), the units
    already pruned (`forced`), the weight (for std and shapes) and whether scores may be < 0."""

    name: str
    scores: torch.Tensor
    forced: torch.Tensor
    weight: torch.Tensor
    signed: bool = False

    @property
    def units(self) -> int:
        return self.scores.numel()


def target_count(layers: Sequence[LayerUnits], sparsity: float) -> int:
    return round(sparsity * sum(layer.units for layer in layers))


def bottom_k(values: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the `k` smallest entries of a 1-D tensor (ties taken in index order)."""
    chosen = torch.zeros_like(values, dtype=torch.bool)
    if k <= 0:
        return chosen
    if k >= values.numel():
        return ~chosen
    threshold = values.kthvalue(k).values
    chosen = values < threshold
    ties = values == threshold
    need = k - int(chosen.sum())
    chosen |= ties & (ties.cumsum(0) <= need)
    return chosen


def _threshold_counts(layers: Sequence[LayerUnits], keys: list[torch.Tensor], k: int) -> list[int]:
    """Per-layer counts of the k lowest `keys` over all layers (forced units first)."""
    flat = [
        key.reshape(-1).double().masked_fill(layer.forced.reshape(-1), -math.inf).cpu()
        for layer, key in zip(layers, keys)
    ]
    chosen = bottom_k(torch.cat(flat), k)
    counts, start = [], 0
    for f in flat:
        counts.append(int(chosen[start : start + f.numel()].sum()))
        start += f.numel()
    return counts


def _check_forced(layers: Sequence[LayerUnits], k: int, sparsity: float) -> None:
    forced = sum(int(layer.forced.sum()) for layer in layers)
    if forced > k:
        total = sum(layer.units for layer in layers)
        raise ValueError(
            f"the model is already {forced / total:.4f} sparse in the targeted weights, more "
            f"than the requested sparsity={sparsity}: pruned weights never come back. Request "
            "a sparsity at least as high, or start from the dense model"
        )


def apportion(desired: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integers near `desired` (each <= its cap) summing to `total`: largest remainders first."""
    counts = [min(int(math.floor(d)), c) for d, c in zip(desired, caps)]
    left = total - sum(counts)
    order = sorted(range(len(desired)), key=lambda i: (-(desired[i] - math.floor(desired[i])), i))
    while left > 0:
        progressed = False
        for i in order:
            if left and counts[i] < caps[i]:
                counts[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return counts


@scopes.register("global")
def global_scope(layers: Sequence[LayerUnits], sparsity: float) -> list[int]:
    k = target_count(layers, sparsity)
    _check_forced(layers, k, sparsity)
    return _threshold_counts(layers, [layer.scores for layer in layers], k)


@scopes.register("std")
def std_scope(layers: Sequence[LayerUnits], sparsity: float) -> list[int]:
    k = target_count(layers, sparsity)
    _check_forced(layers, k, sparsity)
    keys = [
        layer.scores.double() / layer.weight.detach().double().std().clamp_min(1e-30)
        if layer.weight.numel() > 1
        else layer.scores.double()
        for layer in layers
    ]
    return _threshold_counts(layers, keys, k)


@scopes.register("lamp")
def lamp_scope(layers: Sequence[LayerUnits], sparsity: float) -> list[int]:
    if any(layer.signed for layer in layers):
        raise ValueError(
            "scope 'lamp' needs nonnegative importance scores; this importance can be negative "
            "(movement): use scope='global' or 'local'"
        )
    k = target_count(layers, sparsity)
    _check_forced(layers, k, sparsity)
    keys = []
    for layer in layers:
        sq = layer.scores.reshape(-1).double().clamp_min(0) ** 2
        keys.append(lamp_scores(sq.masked_fill(layer.forced.reshape(-1), 0)))
    return _threshold_counts(layers, keys, k)


def _with_forced(layers: Sequence[LayerUnits], counts: list[int]) -> list[int]:
    return [max(c, int(layer.forced.sum())) for layer, c in zip(layers, counts)]


@scopes.register("local")
def local_scope(layers: Sequence[LayerUnits], sparsity: float) -> list[int]:
    units = [layer.units for layer in layers]
    counts = apportion([sparsity * n for n in units], units, target_count(layers, sparsity))
    return _with_forced(layers, counts)


def erk_densities(shapes: Sequence[Sequence[int]], sparsity: float) -> list[float]:
    """Erdos-Renyi-Kernel densities (Evci et al. 2020): density_l = eps * sum(shape)/prod(shape),
    with eps set so that the kept fraction is 1 - sparsity; layers that would exceed 1 are dense."""
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    dense: set[int] = set()
    keep_total = (1 - sparsity) * sum(sizes)
    while True:
        free = [i for i in range(len(shapes)) if i not in dense]
        if not free:
            return [1.0] * len(shapes)
        budget = keep_total - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in free)
        over = [i for i in free if eps * raw[i] > 1]
        if not over:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        top = max(raw[i] for i in over)
        dense |= {i for i in over if raw[i] == top}


@scopes.register("erk")
def erk_scope(layers: Sequence[LayerUnits], sparsity: float) -> list[int]:
    densities = erk_densities([tuple(layer.weight.shape) for layer in layers], sparsity)
    units = [layer.units for layer in layers]
    desired = [(1 - d) * n for d, n in zip(densities, units)]
    return _with_forced(layers, apportion(desired, units, target_count(layers, sparsity)))
