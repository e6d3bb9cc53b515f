"""The masked reference: the ORIGINAL exported graph evaluated with the removed channels deleted.

Every value is computed at full size and the removed channels are zeroed after every op, so
linear ops, elementwise ops, pooling and attention see exactly the kept channels. Ops whose result
depends on how many channels there are (norm statistics, means, softmax over a channel dim...)
are evaluated on the kept channels only and scattered back. Attention keeps the original softmax
temperature (the default scale of the unpruned head size), which is what pruning promises.

This is independent of the surgery code, so it can prove the pruned model right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from prunekit.graph.rules import MASKED_KIND, target_name

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph


class MaskedInterpreter(fx.Interpreter):
    def __init__(self, graph: DependencyGraph, keep: dict[int, torch.Tensor]) -> None:
        super().__init__(graph.exported.graph_module, garbage_collect_values=True)
        self.dg = graph
        self.keep = keep
        self._masks: dict[str, list[torch.Tensor | None]] = {}

    def dim_masks(self, node: fx.Node) -> list[torch.Tensor | None]:
        if node.name not in self._masks:
            self._masks[node.name] = self._masks_of(self.dg.tracer.node_dims.get(node.name))
        return self._masks[node.name]

    def _masks_of(self, dims: list[int] | None) -> list[torch.Tensor | None]:
        """Per dim, the keep mask of its channels (None: all kept)."""
        masks = []
        for a in dims or []:
            m = self.dg.tracer.atoms.keep_mask(a, self.keep)
            masks.append(None if m is None or bool(m.all()) else m)
        return masks

    def run_node(self, n: fx.Node) -> Any:
        if n.op == "call_function" and self._needs_compaction(n):
            result = self._compacted(n)
        else:
            result = super().run_node(n)
        if not isinstance(result, torch.Tensor):
            return result
        if n.op == "call_function" and _mutates(n):  # masked where it was written
            return _apply_mask(result, self.dim_masks(n), in_place=True)
        if n.op == "call_function" and result._is_view():
            # A view of a masked value is masked already, and must stay a view so that in-place
            # ops through it (`bias.clone()[k:2 * k].zero_()`) reach its base.
            return result
        return _apply_mask(result, self.dim_masks(n))

    def _needs_compaction(self, n: fx.Node) -> bool:
        kind = MASKED_KIND.get(target_name(n))
        if kind is None or kind == "attention" or (kind == "batch_norm" and not _batch_stats(n)):
            return False
        inputs = [a for a in n.args if isinstance(a, fx.Node)]
        return any(any(m is not None for m in self.dim_masks(a)) for a in inputs)

    def _compacted(self, n: fx.Node) -> Any:
        """Run `n` on the kept channels only (literals rewritten), then scatter back to full size."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        new_args = list(args)
        for i, a in enumerate(n.args):
            if isinstance(a, fx.Node) and isinstance(args[i], torch.Tensor):
                new_args[i] = _compact(args[i], self.dim_masks(a))
        kind = MASKED_KIND[target_name(n)]
        if kind == "layer_norm":
            x = n.args[0]
            k = len(new_args[1])
            new_args[1] = list(new_args[0].shape[-k:]) if x is not None else new_args[1]
        elif kind == "group_norm":
            atom = self.dg.tracer.notes[n.name]["groups_atom"]
            m = self.dg.tracer.atoms.keep_mask(atom, self.keep)
            if m is not None:
                new_args[1] = int(m.sum())
        out = n.target(*new_args, **kwargs)
        if isinstance(out, (tuple, list)):  # values and indices of max(dim): each scattered back
            pieces = self.dg.tracer.tuple_node_dims.get(n.name) or []
            if len(pieces) == len(out):
                return tuple(_expand(o, self._masks_of(d)) for o, d in zip(out, pieces))
        return _expand(out, self.dim_masks(n))


def _batch_stats(n: fx.Node) -> bool:
    """Does this batch norm normalise with statistics of its input (over every dim but 1)?
    Weight standardisation does (`F.batch_norm(w.reshape(1, out, -1), None, None,
    training=True)`), and its statistics over the fan-in must count the kept inputs only."""
    training = n.args[5] if len(n.args) > 5 else n.kwargs.get("training", False)
    return target_name(n) == "aten.batch_norm.default" and bool(training)


def _mutates(n: fx.Node) -> bool:
    schema = getattr(n.target, "_schema", None)
    return schema is not None and schema.is_mutable


def _compact(t: torch.Tensor, masks: list[torch.Tensor | None]) -> torch.Tensor:
    for dim, m in enumerate(masks):
        if m is not None and dim < t.dim():
            t = t.index_select(dim, m.nonzero().flatten().to(t.device))
    return t


def _expand(out: Any, masks: list[torch.Tensor | None]) -> Any:
    """Scatter a result computed on kept channels back to full size (zeros elsewhere)."""
    if not isinstance(out, torch.Tensor):
        return out
    for dim, m in enumerate(masks):
        if m is not None and dim < out.dim() and out.shape[dim] != m.numel():
            shape = list(out.shape)
            shape[dim] = m.numel()
            full = out.new_zeros(shape)
            full.index_copy_(dim, m.nonzero().flatten().to(out.device), out)
            out = full
    return out


def _apply_mask(
    t: torch.Tensor, masks: list[torch.Tensor | None], *, in_place: bool = False
) -> torch.Tensor:
    """`t` with the removed channels zeroed: a copy, or `t` itself when `in_place`."""
    if not any(m is not None for m in masks) or t.dim() != len(masks):
        return t
    full = None
    for dim, m in enumerate(masks):
        if m is None:
            continue
        shape = [1] * t.dim()
        shape[dim] = m.numel()
        mm = m.to(t.device).view(shape)
        full = mm if full is None else full & mm
    if in_place:
        return t.masked_fill_(~full, 0)
    return torch.where(full, t, torch.zeros((), dtype=t.dtype, device=t.device))


def masked_reference(
    graph: DependencyGraph,
    tensors: dict[str, torch.Tensor],
    args: tuple,
    kwargs: dict | None,
    keep: dict[int, torch.Tensor],
) -> Any:
    """Evaluate the exported graph with `tensors` (FQN -> value) and channels outside `keep` removed.

    Returns the graph's flat outputs (a list).
    """
    ep = graph.exported
    flat = ep._graph_module_flat_inputs(args, kwargs or {})
    flat_inputs = []
    for spec, value in zip(ep.graph_signature.input_specs, flat):
        if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") and spec.target in tensors:
            value = tensors[spec.target]
        flat_inputs.append(value)
    interp = MaskedInterpreter(graph, keep)
    with torch.no_grad():
        outs = interp.run(*flat_inputs, enable_io_processing=False)
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]
