"""`lamp`: layer-adaptive magnitude-based pruning scores (Lee et al. 2021) for channels."""

from __future__ import annotations

import torch

from prunekit.importance.base import Importance, group_reduce
from prunekit.importance.registry import register


def lamp_scores(sq_norms: torch.Tensor) -> torch.Tensor:
    """LAMP of squared magnitudes: with u sorted ascending, ``u_i / Σ_{j ≥ i} u_j``.

    Ties are ordered by index; the largest entry scores 1 and a group of zeros scores 0.
    """
    u = sq_norms.double()
    order = torch.sort(u, stable=True).indices
    sorted_u = u[order]
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_u, [0]), 0), [0])
    ratio = torch.where(suffix > 0, sorted_u / suffix.clamp_min(1e-300), torch.zeros_like(u))
    out = torch.empty_like(u)
    out[order] = ratio
    return out


@register("lamp")
class LAMP(Importance):
    """LAMP on channels: ``w_i² / Σ_{j: w_j² ≥ w_i²} w_j²`` with w_i² the squared l2 norm of
    every parameter slice coupled to channel i (ties ordered by index).

    Scores lie in (0, 1], the strongest channel of every group scores 1, and they are invariant
    to rescaling a group: comparable across groups without further normalisation (made for
    global scope, where the planner's division by the group mean keeps the order within a group).
    """

    name = "lamp"

    def group_scores(self, graph, groups, data=None, **kw):
        return {
            g.key: lamp_scores(group_reduce(graph, g, "abs^2", lambda w: w.float().abs() ** 2))
            for g in groups
        }
