"""Weight-magnitude criteria (`l1`, `l2`) and the `random` baseline."""

from __future__ import annotations

import torch

from prunekit.importance.base import Importance, group_reduce
from prunekit.importance.registry import register


@register("l2")
class L2(Importance):
    """L2 norm of every parameter slice coupled to a channel: sqrt(sum over the group of w^2)."""

    name = "l2"
    p = 2

    def group_scores(self, graph, groups, data=None, **kw):
        p = self.p

        def power(w: torch.Tensor) -> torch.Tensor:
            return w.float().abs() ** p

        def fused(w: torch.Tensor, dims: list[int]) -> torch.Tensor:
            return torch.linalg.vector_norm(w.float(), ord=p, dim=dims) ** p

        return {
            g.key: group_reduce(graph, g, f"abs^{p}", power, reduce=fused) ** (1 / p)
            for g in groups
        }


@register("l1")
class L1(L2):
    """L1 norm (sum of |w|) of every parameter slice coupled to a channel."""

    name = "l1"
    p = 1


@register("random")
class Random(Importance):
    """Uniform random scores: the baseline every criterion must beat. Seeded."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def group_scores(self, graph, groups, data=None, **kw):
        gen = torch.Generator().manual_seed(self.seed)
        return {g.key: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in groups}
