"""Within a layer: which `k` units to prune, over the whole layer or evenly over its rows."""

from __future__ import annotations

import math

import torch

from prunekit.unstructured._scopes import bottom_k


def _keys(scores: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    return scores.double().masked_fill(forced, -math.inf)


def prune_lowest(scores: torch.Tensor, forced: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``[rows, cols]``: the `k` lowest-scoring units of the layer (forced units first)."""
    keys = _keys(scores, forced).reshape(-1)
    return bottom_k(keys, k).reshape(scores.shape)


def prune_per_row(scores: torch.Tensor, forced: torch.Tensor, k: int) -> torch.Tensor:
    """Bool ``[rows, cols]``: `k` units spread evenly over the rows (Wanda's comparison group):
    every row loses `level` units, the largest number that keeps the total within `k`, and
    the rows at that level whose next candidate scores lowest lose one more until `k` is met.
    A row never loses fewer units than it has already lost (`forced`): rows that lost more
    keep their count and count towards `k`, so re-pruning a layer pruned unevenly meets `k`
    instead of adding a full quota to every row."""
    rows, cols = scores.shape
    keys = _keys(scores, forced)
    order = keys.sort(dim=1, stable=True)
    lost = forced.sum(1)
    level = _level(lost, k, cols)
    counts = torch.maximum(lost, torch.full_like(lost, level))
    extra = k - int(counts.sum())
    if extra > 0 and level < cols:
        at_level = torch.nonzero(lost <= level).flatten()
        nexts = order.values[at_level, level].cpu()
        counts[at_level[bottom_k(nexts, extra).to(at_level.device)]] += 1
    ranks = torch.arange(cols, device=scores.device).expand(rows, cols)
    pruned = torch.zeros_like(forced)
    pruned.scatter_(1, order.indices, ranks < counts[:, None])
    return pruned


def _level(lost: torch.Tensor, k: int, cols: int) -> int:
    """The largest per-row count L (0..cols) with sum(max(L, lost)) <= k (0 when even the
    rows' own losses exceed k)."""
    lo, hi = 0, cols
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(torch.clamp(lost, min=mid).sum()) <= k:
            lo = mid
        else:
            hi = mid - 1
    return lo
