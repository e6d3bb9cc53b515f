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
    every row loses ``k // rows``, and the ``k % rows`` rows whose next candidate scores lowest
    lose one more. A row never loses fewer units than it has already lost."""
    rows, cols = scores.shape
    keys = _keys(scores, forced)
    order = keys.sort(dim=1, stable=True)
    quota, extra = divmod(k, rows)
    counts = torch.full((rows,), quota, dtype=torch.long, device=scores.device)
    if extra and quota < cols:
        counts[bottom_k(order.values[:, quota].cpu(), extra).to(scores.device)] += 1
    counts = torch.maximum(counts.clamp_max(cols), forced.sum(1))
    ranks = torch.arange(cols, device=scores.device).expand(rows, cols)
    pruned = torch.zeros_like(forced)
    pruned.scatter_(1, order.indices, ranks < counts[:, None])
    return pruned
