"""The exported-graph fallback: prune the captured ATen graph itself.

When a model's Python code cannot run at the new sizes (e.g. it reshapes with a size taken from
its input, `x.reshape(B, N, C)`), we return the pruned exported graph as a module instead of
failing: the same parameters sliced, and every integer literal that carries a pruned size
rewritten. It is in eval mode with BatchNorm baked in: a deployment artefact, not for fine-tuning.

Channel spaces are traced on a capture with concrete sizes but the batch; the module returned
is, where `torch.export` allows it, a second capture with every size the model leaves free
dynamic (image sizes, sequence lengths), rewritten node for node like the first. Only literals
of dims that lose channels are rewritten: a bound on any other dim (`x[:, :1]` slices the batch
dim 0:INT_MAX first) indexes the same positions at every size.
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.utils._pytree import keystr, tree_flatten_with_path, tree_leaves

from prunekit._copy import deep_copy
from prunekit.graph.rules import target_name
from prunekit.io._exported import baked_eval_mode, export_free_sizes, remember_export_inputs
from prunekit.structured.surgery import kept_size, scaled_factor, slice_parameters

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph


def _kept_prefix(graph, atom: int, keep, upto: int) -> int:
    """Kept channels among the first `upto` indices of `atom`."""
    mask = graph.tracer.atoms.keep_mask(atom, keep)
    return upto if mask is None else int(mask[:upto].sum())


def _new_sizes(graph, node: fx.Node, keep, old: list[Any], key: str) -> list[Any]:
    dims = graph.tracer.node_dims.get(key) or []
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


def rewrite_literals(
    gm: fx.GraphModule, graph: DependencyGraph, keep, names: dict[str, str] | None = None
) -> None:
    """Rewrite size-carrying integer arguments of the nodes of `gm` (named as in the export;
    `names` maps the nodes of another capture of the same program to the traced names)."""
    t = graph.tracer
    names = names or {}
    for node in gm.graph.nodes:
        key = names.get(node.name, node.name)
        if node.op != "call_function" or key not in t.node_dims and key not in t.tuple_node_dims:
            continue
        name = target_name(node)
        args = list(node.args)
        if name in (
            "aten.view.default",
            "aten.reshape.default",
            "aten._unsafe_view.default",
            "aten.expand.default",
        ):
            args[1] = _new_sizes(graph, node, keep, list(args[1]), key)
        elif name == "aten.unflatten.int" and _input_dims(graph, node, names) is not None:
            x_dims = _input_dims(graph, node, names)
            dim = args[1] % len(x_dims)
            out_dims = t.node_dims[key][dim : dim + len(args[2])]
            args[2] = [
                kept_size(graph, a, keep) if isinstance(s, int) and s > 0 else s
                for a, s in zip(out_dims, args[2])
            ]
        elif name in ("aten.layer_norm.default", "aten.rms_norm.default"):
            n = len(args[1])
            args[1] = [kept_size(graph, a, keep) for a in t.node_dims[key][-n:]]
        elif name == "aten.group_norm.default":
            args[1] = kept_size(graph, t.notes[key]["groups_atom"], keep)
        elif name.startswith("aten.conv") and "groups_atom" in t.notes.get(key, {}):
            groups = kept_size(graph, t.notes[key]["groups_atom"], keep)
            index = 8 if name == "aten.convolution.default" else 6
            if len(args) > index:
                args[index] = groups
            else:
                node.kwargs = {**node.kwargs, "groups": groups}
        elif name in ("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default"):
            _rewrite_split(node, graph, keep, args, key, names)
            continue
        elif name == "aten.slice.Tensor":
            _rewrite_slice(node, graph, keep, args, names)
        elif name == "aten.select.int" and _input_dims(graph, node, names) is not None:
            x_dims = _input_dims(graph, node, names)
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
            args[index] = _new_sizes(graph, node, keep, list(args[index]), key)
        node.args = tuple(args)
    gm.recompile()


def _input_dims(graph, node: fx.Node, names: dict[str, str] | None = None) -> list[int] | None:
    """The atoms of the node's input tensor; None for a tensor the tracer did not follow (a
    constant such as a precomputed rotary table), whose sizes nothing prunes."""
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node):
        return None
    return graph.tracer.node_dims.get((names or {}).get(x.name, x.name))


def _loses_channels(graph, atom: int, keep) -> bool:
    return kept_size(graph, atom, keep) != graph.tracer.atoms.size(atom)


def _rewrite_split(node: fx.Node, graph, keep, args: list[Any], key: str, names) -> None:
    t = graph.tracer
    pieces = t.tuple_node_dims.get(key) or []
    x_dims = _input_dims(graph, node, names)
    if x_dims is None:
        return
    val = node.meta.get("val")
    dim_arg = args[2] if len(args) > 2 else node.kwargs.get("dim", 0)
    dim = dim_arg % len(x_dims)
    if not _loses_channels(graph, x_dims[dim], keep):
        return  # the batch, tokens, pixels or channels that all stay: the same pieces
    old = [int(v.shape[dim]) for v in val]  # a channel dim: static sizes
    sizes = [kept_size(graph, p[dim], keep) if p else o for p, o in zip(pieces, old)]
    if sizes != old:
        node.target = torch.ops.aten.split_with_sizes.default
        node.args = (args[0], sizes, dim)
        node.kwargs = {}


def _rewrite_slice(node: fx.Node, graph, keep, args: list[Any], names) -> None:
    """Bounds on a dim that loses channels count kept channels; an open end (None, INT_MAX or
    past the size) stays open. Bounds on any other dim (the batch, tokens, pixels, channels that
    all stay) index the same positions as before and are left alone: the size seen at capture is
    no bound there (the batch and dynamic sizes change from call to call)."""
    x_dims = _input_dims(graph, node, names)
    if x_dims is None:
        return
    dim = (args[1] if len(args) > 1 else 0) % len(x_dims)
    atom = x_dims[dim]
    size = graph.tracer.atoms.size(atom)
    if size < 1 or not _loses_channels(graph, atom, keep):
        return
    start = args[2] if len(args) > 2 else None
    end = args[3] if len(args) > 3 else None
    if not all(isinstance(v, (int, type(None))) for v in (start, end)):
        return
    s, e, _ = slice(start, end).indices(size)
    new_s = _kept_prefix(graph, atom, keep, s)
    new_e = end if end is None or end >= size else _kept_prefix(graph, atom, keep, max(e, s))
    while len(args) < 4:
        args.append(None)
    args[2], args[3] = new_s, new_e


def exported_module(
    graph: DependencyGraph, source: nn.Module, program: ExportedProgram | None = None
) -> fx.GraphModule:
    """A fresh module of the exported graph (or of `program`, another capture of the same
    model), carrying `source`'s current tensors."""
    gm = copy.deepcopy(program if program is not None else graph.exported).module()
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

    The channel spaces are traced on a capture whose only dynamic size is the batch (they need
    concrete sizes). The module returned is, where possible, a second capture of the model with
    every size dynamic that the model leaves free (image sizes, sequence lengths), pruned with the
    same rewrites node for node: it must be the same program op for op and compute exactly what
    the first one computes at the example inputs, else the first one is returned, which accepts
    only the example's sizes outside the batch dim. Either way an input the graph does not accept
    raises a ValueError naming the shapes it expects.
    """
    graph, keep = _exported_twin(graph, keep)
    gm, program = None, graph.exported
    free = _free_sizes(graph)
    reason = free.get("failure")
    if "program" in free:
        checked = graph.cache.setdefault("free_sizes_checked", {})  # per plan: rewrites agree?
        plan_key = _keep_key(keep)
        try:
            built = _pruned_with_arguments(graph, free["program"], source, keep, free["names"])
            candidate = built[0]
            if plan_key not in checked:
                fixed = _pruned_with_arguments(graph, graph.exported, source, keep)
                same = _same_rewrites(built, fixed, free["names"])
                checked[plan_key] = None if same else _difference(candidate, fixed[0], graph)
        except Exception as exc:  # noqa: BLE001 - the fixed-size graph stands
            checked[plan_key] = f"{type(exc).__name__}: {exc}"
        if checked[plan_key] is None:
            gm, program = candidate, free["program"]
        else:
            reason = f"pruned, it differs from the graph at fixed sizes: {checked[plan_key]}"
    if gm is None:
        gm = _pruned_module(graph, graph.exported, source, keep)
    inputs = _expected_inputs(program)
    if program is not graph.exported:
        note = "the sizes marked * are free within the constraints the model's code puts on them"
    elif reason is None:
        note = "the model's code fixes the other sizes"
    else:
        note = (
            "it was captured at the example inputs' sizes: prune with inputs of the size you need"
        )
        warnings.warn(
            f"result.model (the graph captured by torch.export) accepts only inputs of the "
            f"example's sizes, * marking the dynamic ones: {_describe(inputs)}; capturing the "
            f"model with its other sizes dynamic failed ({_first_line(reason)})",
            stacklevel=2,
        )
    gm.register_forward_pre_hook(_InputCheck(inputs, note), with_kwargs=True, prepend=True)
    remember_export_inputs(gm, graph.export_args, dict(graph.export_kwargs or {}))
    return baked_eval_mode(gm)


def _pruned_module(graph, program, source, keep, names=None) -> fx.GraphModule:
    return _pruned_with_arguments(graph, program, source, keep, names)[0]


def _pruned_with_arguments(graph, program, source, keep, names=None) -> tuple[fx.GraphModule, dict]:
    """The pruned module, and its nodes' arguments before the rewrites (by node name)."""
    gm = exported_module(graph, source, program)
    slice_parameters(gm, graph, keep)
    before = {n.name: _arguments(n) for n in gm.graph.nodes if n.op == "call_function"}
    rewrite_literals(gm, graph, keep, names)
    _drop_dead_nodes(gm)
    return gm, before


def _arguments(node: fx.Node) -> dict:
    """The node's arguments by pytree path."""
    leaves, _ = tree_flatten_with_path((node.args, node.kwargs))
    return {keystr(path): leaf for path, leaf in leaves}


def _keep_key(keep: dict) -> tuple:
    return tuple(sorted((atom, mask.cpu().numpy().tobytes()) for atom, mask in keep.items()))


def _same_rewrites(free: tuple, fixed: tuple, names: dict[str, str]) -> bool:
    """True when the pruned graph with free sizes provably computes, at the example inputs, what
    the pruned graph at fixed sizes computes: node for node the same arguments, except sizes the
    free graph reads at run time where the fixed graph kept the captured literal. (Else the two
    are compared by running them: a rescaled run-time size, `B * heads`...)

    `free` and `fixed` are (module, arguments before the rewrites) as `_pruned_with_arguments`
    returns them; `names` maps the free graph's nodes to the fixed graph's."""
    (free_gm, free_before), (fixed_gm, fixed_before) = free, fixed
    fixed_nodes = {n.name: n for n in fixed_gm.graph.nodes}
    for node in free_gm.graph.nodes:
        if node.op != "call_function" or node.name not in names:
            continue
        key = names[node.name]
        other = fixed_nodes.get(key)
        if other is None or other.target != node.target or node.name not in free_before:
            return False
        free_now, fixed_now = _arguments(node), _arguments(other)
        free_was, fixed_was = free_before[node.name], fixed_before.get(key, {})
        if free_now.keys() != fixed_now.keys():
            return False
        for path, value in free_now.items():
            if isinstance(value, fx.Node):
                was = free_was.get(path)
                if not isinstance(was, fx.Node) or was.name != value.name:
                    return False  # a run-time size rewritten
                fixed_value = fixed_now[path]
                if not isinstance(fixed_value, fx.Node) and not _equal(
                    fixed_value, fixed_was.get(path)
                ):
                    return False  # a literal rewritten where the free graph reads the size
            elif isinstance(fixed_now[path], fx.Node) or not _equal(value, fixed_now[path]):
                return False
    return True


def _equal(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - values without a plain equality are not proved equal
        return False


def _difference(candidate: nn.Module, reference: nn.Module, graph) -> str | None:
    """None when the two graphs compute the same outputs at the example inputs (the same ops on
    the same tensors: equal to rounding, NaNs and infinities in the same places), else how not."""
    args, kwargs = graph.export_args, dict(graph.export_kwargs or {})
    with torch.no_grad():
        actual, expected = candidate(*args, **kwargs), reference(*args, **kwargs)
    a_leaves, e_leaves = tree_leaves(actual), tree_leaves(expected)
    if len(a_leaves) != len(e_leaves):
        return "other outputs"
    for a, e in zip(a_leaves, e_leaves):
        if not isinstance(e, torch.Tensor):
            continue
        try:
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7, equal_nan=True)
        except AssertionError as exc:
            return _first_line(str(exc))
    return None


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


def _free_sizes(graph: DependencyGraph) -> dict[str, Any]:
    """The model exported with every input size dynamic that it leaves free (memoised):
    {"program", "names"} (names: its nodes -> the traced export's), {"failure": why not} or {}
    when the model fixes every size but the batch itself (a learned position table...)."""
    if "free_sizes" not in graph.cache:
        graph.cache["free_sizes"] = _export_free_sizes(graph)
    return graph.cache["free_sizes"]


def _export_free_sizes(graph: DependencyGraph) -> dict[str, Any]:
    twin = deep_copy(graph.model).eval()
    kwargs = dict(graph.export_kwargs or {})
    try:
        program = export_free_sizes(twin, graph.export_args, kwargs)
    except Exception as exc:  # noqa: BLE001 - reported in the warning
        return {"failure": f"torch.export: {type(exc).__name__}: {exc}"}
    reference = _expected_inputs(graph.exported)
    if _expected_inputs(program) == reference:
        return {}  # nothing more is free than in the traced export
    names = _match_nodes(graph.exported, program)
    if names is None:
        return {"failure": "torch.export captured other ops with those sizes dynamic"}
    return {"program": program, "names": names}


def _tensor_steps(program: ExportedProgram) -> list[fx.Node]:
    """Inputs and the nodes computing tensors, in order (not the size arithmetic)."""
    out = []
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            out.append(node)
        elif node.op == "call_function" and (
            isinstance(val, torch.Tensor)
            or isinstance(val, (tuple, list))
            and any(isinstance(v, torch.Tensor) for v in val)
        ):
            out.append(node)
    return out


def _match_nodes(static: ExportedProgram, free: ExportedProgram) -> dict[str, str] | None:
    """`free`'s node names -> `static`'s, when `free` is the same program op for op (the same
    targets, reading the same tensors, with the same static sizes); else None."""
    specs = [(s.kind, s.target) for s in static.graph_signature.input_specs]
    if specs != [(s.kind, s.target) for s in free.graph_signature.input_specs]:
        return None
    a_steps, b_steps = _tensor_steps(static), _tensor_steps(free)
    if len(a_steps) != len(b_steps):
        return None
    names: dict[str, str] = {}
    for a, b in zip(a_steps, b_steps):
        if a.op != b.op or a.target != b.target:
            return None
        if [names.get(n.name) for n in _tensor_args(b)] != [n.name for n in _tensor_args(a)]:
            return None
        if a.target is operator.getitem and a.args[1:] != b.args[1:]:
            return None
        if not _same_static_sizes(a.meta.get("val"), b.meta.get("val")):
            return None
        names[b.name] = a.name
    outputs = [next(iter(p.graph.find_nodes(op="output"))) for p in (static, free)]
    a_out, b_out = (_flat_nodes(o.args) for o in outputs)
    if [names.get(n.name) for n in b_out] != [n.name for n in a_out]:
        return None
    return names


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    """The node's arguments that are tensors (placeholders or tensor steps)."""
    return [
        n
        for n in _flat_nodes([*node.args, *node.kwargs.values()])
        if n.op == "placeholder" or isinstance(n.meta.get("val"), (torch.Tensor, tuple, list))
    ]


def _flat_nodes(value: Any) -> list[fx.Node]:
    return [v for v in tree_leaves(value) if isinstance(v, fx.Node)]


def _same_static_sizes(a: Any, b: Any) -> bool:
    """Tensor values of the same ranks, whose sizes agree wherever both are static."""
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_static_sizes(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        sizes = [(_static_size(x), _static_size(y)) for x, y in zip(a.shape, b.shape)]
        return a.dim() == b.dim() and all(x is None or y is None or x == y for x, y in sizes)
    return isinstance(a, torch.Tensor) == isinstance(b, torch.Tensor)


def _static_size(size: Any) -> int | None:
    """`size` as an int, None when it is symbolic (export's specialised sizes are SymInts
    holding a constant)."""
    if isinstance(size, torch.SymInt):
        try:
            return size.node.maybe_as_int()
        except Exception:  # noqa: BLE001 - a size we cannot read is not static
            return None
    return int(size)


def _expected_inputs(program: ExportedProgram) -> list[tuple[str, tuple | None]]:
    """(name, shape) of every user input, None for a dynamic size (the shape None for a value
    that is not a tensor)."""
    placeholders = {n.name: n for n in program.graph.find_nodes(op="placeholder")}
    free = {str(s) for s in program.range_constraints}
    out = []
    for spec in program.graph_signature.input_specs:
        if spec.kind != InputKind.USER_INPUT:
            continue
        name = getattr(spec.arg, "name", "")
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        shape = None
        if isinstance(val, torch.Tensor):
            shape = tuple(_input_size(s, free) for s in val.shape)
        out.append((name, shape))
    return out


def _input_size(size: Any, free: set[str]) -> int | None:
    """An input size as an int, None when the program leaves it free (its symbol has a range:
    reading the size as an int later, as tracing the graph does, pins the symbol's value in
    the shape environment but not in the program)."""
    if not isinstance(size, torch.SymInt):
        return int(size)
    expr = size.node._expr
    if any(str(s) in free for s in getattr(expr, "free_symbols", ())):
        return None
    return _static_size(size)


def _shape_text(shape: tuple) -> str:
    return (
        "("
        + ", ".join("*" if s is None else str(s) for s in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def _describe(inputs: list[tuple[str, tuple | None]]) -> str:
    shapes = [f"`{name}` {_shape_text(shape)}" for name, shape in inputs if shape is not None]
    return ", ".join(shapes) + (" (* = any size)" if any(None in s for _, s in inputs if s) else "")


def _first_line(text: str) -> str:
    """A one-line summary (torch's messages can start with a newline and span pages)."""
    return " ".join(str(text).split())[:300]


class _InputCheck:
    """A forward pre-hook of the pruned exported graph: an input it does not accept raises a
    ValueError naming the shapes it accepts, rather than torch's `Guard failed` AssertionError."""

    def __init__(self, inputs: list[tuple[str, tuple | None]], note: str) -> None:
        self.inputs = inputs
        self.note = note  # why sizes are fixed, or what bounds the free ones

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            from torch.export._unlift import _check_inputs_match

            flat = [v for _, v in _check_inputs_match(args, kwargs, module._in_spec)]
        except Exception:  # noqa: BLE001 - torch reports inputs of the wrong structure itself
            return None
        if len(flat) != len(self.inputs):
            return None
        for value, (name, shape) in zip(flat, self.inputs):
            if shape is None or not isinstance(value, torch.Tensor):
                continue
            got = tuple(value.shape)
            if not all(type(g) is int for g in got):
                return None  # being traced (re-exported) with symbolic sizes: export checks
            if len(got) != len(shape) or any(e is not None and e != g for e, g in zip(shape, got)):
                raise ValueError(self._message(f"`{name}` has shape {got}"))
        guards = getattr(module, "_guards_fn", None)
        if guards is not None:
            try:
                guards(*flat)
            except AssertionError as exc:
                raise ValueError(self._message(f"the input sizes break `{exc}`")) from None
        return None

    def _message(self, problem: str) -> str:
        return (
            f"{problem}, but this pruned exported graph (returned where the model's Python code "
            f"cannot run at the pruned sizes) accepts {_describe(self.inputs)}; {self.note}"
        )


def _drop_dead_nodes(gm: fx.GraphModule) -> None:
    """Size arithmetic no rewritten node reads any more goes; the input guards stay (inputs are
    never pruned, and an input the graph cannot run fails there, clearly: see `_InputCheck`)."""
    gm.graph.eliminate_dead_code()
    gm.recompile()
