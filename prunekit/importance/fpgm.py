"""`fpgm`: filter pruning via the geometric median (He et al. 2019)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunekit.importance.base import Importance, member_slices
from prunekit.importance.registry import register

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph, Group


def channel_vectors(tensor: torch.Tensor, dim: int, index: torch.Tensor, size: int) -> torch.Tensor:
    """[size, k] float64: row c is every entry of `tensor` whose index along `dim` maps to channel
    c, in index order (a head-dim channel collects its row in every head, then flattens)."""
    rows = tensor.detach().double().movedim(dim, 0).reshape(tensor.shape[dim], -1).cpu()
    valid = (index >= 0).nonzero().flatten()
    channel = index[valid]
    counts = torch.bincount(channel, minlength=size)
    if bool((counts == counts[0]).all()):
        order = valid[torch.argsort(channel, stable=True)]
        return rows[order].reshape(size, -1)
    # uneven maps (not produced by the tracer's leaf channels): sum the rows of each channel
    out = torch.zeros(size, rows.shape[1], dtype=torch.float64)
    return out.index_add_(0, channel, rows[valid])


def pairwise_sq_distances(graph: DependencyGraph, group: Group) -> torch.Tensor:
    """[C, C] squared Euclidean distances between the channels' concatenated parameter slices."""
    d2 = torch.zeros(group.size, group.size, dtype=torch.float64)
    seen = set()
    for tensor, dim, index in member_slices(graph, group):
        key = (tensor.data_ptr(), tuple(tensor.shape), dim)
        if key in seen:  # tied parameters: one tensor under several names counts once
            continue
        seen.add(key)
        v = channel_vectors(tensor, dim, index, group.size)
        sq = (v * v).sum(1)
        d2 += (sq[:, None] + sq[None, :] - 2.0 * (v @ v.T)).clamp_min_(0.0)
    return d2


@register("fpgm")
class FPGM(Importance):
    """Geometric median: ``score_i = Σ_j ‖v_i − v_j‖₂``, v_i = channel i's concatenated slices.

    v_i concatenates every parameter slice coupled to channel i (producer filters, biases, norm
    γ/β, consumer columns; tied weights once). Channels close to the group's geometric median
    are the most replaceable by the others and score lowest (He et al. 2019 rank filters this
    way). Unnormalised (units of the weights); global scope divides by the group mean.
    """

    name = "fpgm"

    def group_scores(self, graph, groups, data=None, **kw):
        return {g.key: pairwise_sq_distances(graph, g).sqrt().sum(1) for g in groups}
