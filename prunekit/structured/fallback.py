"""The exported-graph fallback: prune the captured ATen graph itself.

When a model's Python code cannot run at the new sizes (e.g. it reshapes with a size taken from
its input, `x.reshape(B, N, C)`), we return the pruned exported graph as a module instead of
failing: the same parameters sliced, and every integer literal that carries a pruned size
rewritten. It is in eval mode with BatchNorm baked in: a deployment artefact, not for fine-tuning.
"""

from __future__ import annotations

import copy
import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram

from prunekit.graph.rules import target_name
from prunekit.io._exported import baked_eval_mode
from prunekit.structured.surgery import kept_size, scaled_factor, slice_parameters

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph


def _kept_prefix(graph, atom: int, keep, upto: int) -> int:
    """Kept channels among the first `upto` indices of `atom`."""
    mask = graph.tracer.atoms.keep_mask(atom, keep)
    return upto if mask is None else int(mask[:upto].sum())


def _new_sizes(graph, node: fx.Node, keep, old: list[Any]) -> list[Any]:
    dims = graph.tracer.node_dims.get(node.name) or []
    out = []
    for value, atom in zip(old, dims):
        if isinstance(value, int) and value > 0:
            out.append(kept_size(graph, atom, keep))
        elif isinstance(value, fx.Node):
            out.append(_scaled_symbol(graph, node, value, atom, keep))
        else:
            out.append(value)
    return out + list(old[len(dims) :])


def _scaled_symbol(graph, node: fx.Node, value: fx.Node, atom: int, keep) -> Any:
    """A run-time size `n * c` (heads folded into the batch: `B * num_heads`) whose channel
    factor `c` shrinks: `n * c'`, computed before `node`. Other symbols are left as they are."""
    if kept_size(graph, atom, keep) == graph.tracer.atoms.size(atom):
        return value
    if value.target is not operator.mul or len(value.args) != 2:
        return value
    constants = [a for a in value.args if isinstance(a, int)]
    symbols = [a for a in value.args if isinstance(a, fx.Node)]
    if len(constants) != 1 or len(symbols) != 1 or constants[0] < 1:
        return value
    factor = scaled_factor(graph, atom, keep, constants[0])
    if factor is None:
        return value
    with node.graph.inserting_before(node):
        return node.graph.call_function(operator.mul, (symbols[0], factor))


def rewrite_literals(gm: fx.GraphModule, graph: DependencyGraph, keep) -> None:
    """Rewrite size-carrying integer arguments of the nodes of `gm` (named as in the export)."""
    t = graph.tracer
    for node in gm.graph.nodes:
        if (
            node.op != "call_function"
            or node.name not in t.node_dims
            and node.name not in t.tuple_node_dims
        ):
            continue
        name = target_name(node)
        args = list(node.args)
        if name in (
            "aten.view.default",
            "aten.reshape.default",
            "aten._unsafe_view.default",
            "aten.expand.default",
        ):
            args[1] = _new_sizes(graph, node, keep, list(args[1]))
        elif name == "aten.unflatten.int" and _input_dims(graph, node) is not None:
            x_dims = _input_dims(graph, node)
            dim = args[1] % len(x_dims)
            out_dims = t.node_dims[node.name][dim : dim + len(args[2])]
            args[2] = [
                kept_size(graph, a, keep) if s != -1 else s for a, s in zip(out_dims, args[2])
            ]
        elif name in ("aten.layer_norm.default", "aten.rms_norm.default"):
            n = len(args[1])
            args[1] = [kept_size(graph, a, keep) for a in t.node_dims[node.name][-n:]]
        elif name == "aten.group_norm.default":
            args[1] = kept_size(graph, t.notes[node.name]["groups_atom"], keep)
        elif name.startswith("aten.conv") and "groups_atom" in t.notes.get(node.name, {}):
            groups = kept_size(graph, t.notes[node.name]["groups_atom"], keep)
            index = 8 if name == "aten.convolution.default" else 6
            if len(args) > index:
                args[index] = groups
            else:
                node.kwargs = {**node.kwargs, "groups": groups}
        elif name in ("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default"):
            _rewrite_split(node, graph, keep, args)
            continue
        elif name == "aten.slice.Tensor":
            _rewrite_slice(node, graph, keep, args)
        elif name == "aten.select.int" and _input_dims(graph, node) is not None:
            x_dims = _input_dims(graph, node)
            dim = args[1] % len(x_dims)
            if isinstance(args[2], int) and args[2] >= 0:
                args[2] = _kept_prefix(graph, x_dims[dim], keep, args[2])
        elif name in (
            "aten.zeros.default",
            "aten.ones.default",
            "aten.full.default",
            "aten.empty.memory_format",
            "aten.new_zeros.default",
            "aten.new_ones.default",
            "aten.new_empty.default",
            "aten.new_full.default",
        ):
            index = 1 if name.startswith("aten.new_") else 0
            args[index] = _new_sizes(graph, node, keep, list(args[index]))
        node.args = tuple(args)
    gm.recompile()


def _input_dims(graph, node: fx.Node) -> list[int] | None:
    """The atoms of the node's input tensor; None for a tensor the tracer did not follow (a
    constant such as a precomputed rotary table), whose sizes nothing prunes."""
    x = node.args[0] if node.args else None
    return graph.tracer.node_dims.get(x.name) if isinstance(x, fx.Node) else None


def _rewrite_split(node: fx.Node, graph, keep, args: list[Any]) -> None:
    t = graph.tracer
    pieces = t.tuple_node_dims.get(node.name) or []
    x_dims = _input_dims(graph, node)
    if x_dims is None:
        return
    val = node.meta.get("val")
    dim_arg = args[2] if len(args) > 2 else node.kwargs.get("dim", 0)
    dim = dim_arg % len(x_dims)
    sizes = [
        kept_size(graph, p[dim], keep) if p else int(v.shape[dim]) for p, v in zip(pieces, val)
    ]
    if sizes != [int(v.shape[dim]) for v in val]:
        node.target = torch.ops.aten.split_with_sizes.default
        node.args = (args[0], sizes, dim)
        node.kwargs = {}


def _rewrite_slice(node: fx.Node, graph, keep, args: list[Any]) -> None:
    t = graph.tracer
    x_dims = _input_dims(graph, node)
    if x_dims is None:
        return
    dim = (args[1] if len(args) > 1 else 0) % len(x_dims)
    size = t.shape(node.args[0])[dim]
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    if not isinstance(size, int) or not all(isinstance(v, (int, type(None))) for v in (start, end)):
        return
    s, e, _ = slice(start, end).indices(size)
    new_s = _kept_prefix(graph, x_dims[dim], keep, s)
    new_e = _kept_prefix(graph, x_dims[dim], keep, max(e, s))
    while len(args) < 4:
        args.append(None)
    args[2], args[3] = new_s, new_e


def exported_module(graph: DependencyGraph, source: nn.Module) -> fx.GraphModule:
    """A fresh module of the exported graph, carrying `source`'s current tensors."""
    gm = copy.deepcopy(graph.exported).module()
    # parameters and all buffers, non-persistent ones included (rotary frequencies...)
    state = dict(source.named_parameters(remove_duplicate=False))
    state.update(source.named_buffers(remove_duplicate=False))
    targets = dict(gm.named_parameters(remove_duplicate=False))
    targets.update(gm.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, value in targets.items():
            if name in state and state[name].shape == value.shape:
                value.copy_(state[name])
    return gm


def prune_exported(graph: DependencyGraph, source: nn.Module, keep) -> fx.GraphModule:
    """Slice tensors and rewrite literals of the exported graph of `source`.

    A recorded graph (see `prunekit.graph.record`) is first re-captured with `torch.export`,
    whose program can become a module; its groups carry the same keys, so `keep` carries over.
    """
    graph, keep = _exported_twin(graph, keep)
    gm = exported_module(graph, source)
    slice_parameters(gm, graph, keep)
    rewrite_literals(gm, graph, keep)
    _drop_shape_guards(gm)
    return baked_eval_mode(gm)


def _exported_twin(graph: DependencyGraph, keep) -> tuple[DependencyGraph, dict]:
    if isinstance(graph.exported, ExportedProgram):
        return graph, keep
    if "exported_twin" not in graph.cache:
        from prunekit.graph.graph import trace

        graph.cache["exported_twin"] = trace(
            graph.model, graph.export_args, graph.export_kwargs or None, capture="export"
        )
    twin: DependencyGraph = graph.cache["exported_twin"]
    atoms = {g.key: g.atom for g in twin.groups}
    by_atom = {g.atom: g.key for g in graph.groups}
    missing = [by_atom.get(a, a) for a in keep if by_atom.get(a) not in atoms]
    if missing:
        raise RuntimeError(f"torch.export found other groups than the recorded graph: {missing}")
    return twin, {atoms[by_atom[a]]: mask for a, mask in keep.items()}


def _drop_shape_guards(gm: fx.GraphModule) -> None:
    """The export's input guards only concern the inputs, which pruning never changes."""
    gm.graph.eliminate_dead_code()
    gm.recompile()
