"""Predict MACs and parameters of a pruned model from the graph, without building it.

Dense MACs per op come from `torch.utils.flop_counter` (run once on the exported graph); a plan
scales each op by the kept fraction of the channel spaces its work is proportional to (output
dims and contracted dims). Parameters are exact: the product of kept sizes of every dim.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import fx
from torch.utils.flop_counter import FlopCounterMode

from prunekit.graph.rules import target_name
from prunekit.metrics._counting import EXTRA_FLOP_FORMULAS

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph


class _CountingInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.macs: dict[str, float] = {}

    def run_node(self, n: fx.Node):
        if n.op != "call_function":
            return super().run_node(n)
        counter = FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS))
        with counter:
            out = super().run_node(n)
        flops = counter.get_total_flops()
        if flops:
            self.macs[n.name] = flops / 2
        return out


def dense_macs_per_node(graph: DependencyGraph) -> dict[str, float]:
    ep = graph.exported
    flat = ep._graph_module_flat_inputs(graph.export_args, graph.export_kwargs)
    interp = _CountingInterpreter(ep.graph_module)
    with torch.no_grad():
        interp.run(*flat, enable_io_processing=False)
    batch = _export_batch(graph)
    return {k: v / batch for k, v in interp.macs.items()}


def _export_batch(graph: DependencyGraph) -> int:
    for a in graph.export_args:
        if isinstance(a, torch.Tensor) and a.dim():
            return int(a.shape[0])
    return 1


class CostModel:
    """MACs (per example) and parameter counts of the model under a keep-mask assignment."""

    def __init__(self, graph: DependencyGraph) -> None:
        self.graph = graph
        self._nodes = {n.name: n for n in graph.exported.graph.nodes}
        self.node_macs = dense_macs_per_node(graph)
        self.node_terms = {name: self._work_terms(name) for name in self.node_macs}

    def _work_terms(self, name: str) -> list[tuple[float, list[int]]]:
        """(share of the op's MACs, channel spaces that share is proportional to) per term."""
        node = self._nodes[name]
        if "scaled_dot_product_attention" in target_name(node):
            return self._attention_terms(node)
        return [(1.0, self._work_atoms(node))]

    def _attention_terms(self, node: fx.Node) -> list[tuple[float, list[int]]]:
        """Scores q·kᵀ cost B·H·Nq·Nk·D, the weighted sum of values B·H·Nq·Nk·Dv: each term
        shrinks with its own head size (v's head dims may be pruned apart from q's and k's)."""
        t = self.graph.tracer
        q, k, v = (t.node_dims[a.name] for a in node.args[:3])
        d, dv = (t.atoms.size(a) for a in (q[-1], v[-1]))
        shared = list(q[:-1]) + [k[-2]]  # batch, heads, queries; keys
        return [(d / (d + dv), [*shared, q[-1]]), (dv / (d + dv), [*shared, v[-1]])]

    def _work_atoms(self, node: fx.Node) -> list[int]:
        """Channel spaces the op's work is proportional to: output dims + contracted dims."""
        name = node.name
        t = self.graph.tracer
        atoms = list(t.node_dims.get(name) or [])
        op = target_name(node)
        args = node.args
        if "conv" in op and len(args) > 1:
            atoms.append(t.node_dims[args[1].name][0 if "transpose" in op else 1])
        elif op == "aten.linear.default":
            atoms.append(t.node_dims[args[0].name][-1])
        elif op in ("aten.matmul.default", "aten.bmm.default", "aten.mm.default"):
            atoms.append(t.node_dims[args[0].name][-1])
        elif op in ("aten.addmm.default", "aten.baddbmm.default"):
            atoms.append(t.node_dims[args[1].name][-1])
        return atoms

    def fraction(self, atom: int, keep) -> float:
        mask = self.graph.tracer.atoms.keep_mask(atom, keep)
        return 1.0 if mask is None else float(mask.float().mean())

    def macs(self, keep) -> float:
        total = 0.0
        for name, dense in self.node_macs.items():
            for share, atoms in self.node_terms[name]:
                frac = share
                for atom in atoms:
                    if self.graph.tracer.atoms.size(atom) > 1:
                        frac *= self.fraction(atom, keep)
                total += dense * frac
        return total

    def params(self, keep) -> int:
        t = self.graph.tracer
        total = 0
        seen = set()
        for node_name, (fqn, kind) in t.placeholder_target.items():
            if kind != "parameter" or fqn in seen:
                continue
            seen.add(fqn)
            dims = t.node_dims.get(node_name) or []
            sizes = []
            for atom in dims:
                mask = t.atoms.keep_mask(atom, keep)
                sizes.append(t.atoms.size(atom) if mask is None else int(mask.sum()))
            total += math.prod(sizes)
        return total
