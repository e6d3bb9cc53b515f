"""What every criterion computes: one score per channel of each group (higher = keep)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph, Group


class Importance:
    """Base class of criteria. Subclasses implement `group_scores`.

    `requires_data` criteria need calibration batches (`data=`) and say so when missing.
    """

    name = "base"
    requires_data = False

    def scores(
        self, graph: DependencyGraph, groups: list[Group], data: Any = None, **kw: Any
    ) -> dict[str, torch.Tensor]:
        if self.requires_data and data is None:
            raise ValueError(
                f"importance {self.name!r} is data-driven: pass calibration batches with data=..."
            )
        return self.group_scores(graph, groups, data=data, **kw)

    def group_scores(self, graph, groups, data=None, **kw) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _dims_by_name(graph: DependencyGraph) -> dict[str, list[int]]:
    key = "dims_by_name"
    if key not in graph.cache:
        t = graph.tracer
        graph.cache[key] = {
            t.placeholder_target[n][0]: t.node_dims[n] for n in t.placeholder_target
        }
    return graph.cache[key]


def member_slices(graph: DependencyGraph, group: Group):
    """Yield (tensor, dim, index_map) for each parameter slice of `group`.

    `index_map[i]` is the channel of the group that index i of `dim` belongs to (-1: none).
    """
    tracer = graph.tracer
    dims_by_name = _dims_by_name(graph)
    for m in group.members:
        if m.kind != "parameter":
            continue
        tensor = graph.model.get_parameter(m.name)
        index = tracer.atoms.index_map(dims_by_name[m.name][m.dim], group.atom)
        yield tensor.detach(), m.dim, index


def group_reduce(
    graph: DependencyGraph,
    group: Group,
    stat: str,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    tensors: Mapping[str, torch.Tensor] | None = None,
    cache: dict | None = None,
    only: Callable[[str], bool] | None = None,
    reduce: Callable[[torch.Tensor, list[int]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum over the group's parameter slices of `fn(w)`, per channel of the group.

    `fn(w)` is reduced over every axis but the slice's own dim once per (parameter, dim, stat)
    and cached on the graph: densely connected models share one weight among many groups.

    - `tensors`: FQN -> tensor reduced instead of the parameter itself (e.g. ``w * grad`` for
      Taylor); a parameter missing from it contributes nothing.
    - `cache`: where reductions are memoised (default `graph.cache`); pass a fresh dict for values
      that depend on more than the weights (gradients, calibration data).
    - `only`: keep the members whose FQN satisfies it (e.g. norm scales only).
    - `reduce(w, other_dims)`: a fused replacement for `fn(w).sum(other_dims)` (one pass over
      large weights instead of several), used instead of `fn` when given.
    """
    out = torch.zeros(group.size, dtype=torch.float64)
    dims_by_name = _dims_by_name(graph)
    memo = graph.cache if cache is None else cache
    for m in group.members:
        if m.kind != "parameter" or (only is not None and not only(m.name)):
            continue
        key = ("stat", stat, m.name, m.dim)
        per_index = memo.get(key)
        if per_index is None:
            if tensors is None:
                source = graph.model.get_parameter(m.name).detach()
            elif m.name in tensors:
                source = tensors[m.name]
            else:
                continue
            other = [d for d in range(source.dim()) if d != m.dim]
            if reduce is not None and other:
                per_index = reduce(source, other).double().cpu()
            else:
                values = fn(source)
                per_index = (values.sum(dim=other) if other else values).double().cpu()
            memo[key] = per_index
        index = graph.tracer.atoms.index_map(dims_by_name[m.name][m.dim], group.atom)
        valid = index >= 0
        out.index_add_(0, index[valid], per_index[valid])
    return out
