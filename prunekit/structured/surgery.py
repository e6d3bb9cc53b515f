"""Physical removal: slice every coupled parameter/buffer and update size-carrying attributes."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from prunekit.graph.rules import target_name
from prunekit.structured.config_sizes import is_config, update_config_sizes
from prunekit.structured.literal_sources import literal_sources
from prunekit.unstructured._masks import MASK_SUFFIX

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph
    from prunekit.structured.plan import Plan


def keep_masks(graph: DependencyGraph, plan: Plan) -> dict[int, torch.Tensor]:
    """Boolean kept-masks per leaf atom of `graph`, from a plan (validated against the graph)."""
    by_key = {g.key: g for g in graph.groups}
    masks: dict[int, torch.Tensor] = {}
    for pg in plan.groups:
        if not pg.removed:
            continue
        group = by_key.get(pg.key)
        if group is None:
            raise ValueError(
                f"plan group {pg.key!r} does not exist in this model's graph; was the plan made "
                "for another architecture or with other example inputs?"
            )
        if group.size != pg.size:
            raise ValueError(f"plan group {pg.key!r} has size {pg.size}, the model {group.size}")
        if not pg.keep or min(pg.keep) < 0 or max(pg.keep) >= pg.size:
            raise ValueError(f"plan group {pg.key!r}: kept indices must be within 0..{pg.size - 1}")
        mask = torch.zeros(pg.size, dtype=torch.bool)
        mask[torch.tensor(pg.keep)] = True
        masks[group.atom] = mask
    return masks


def dim_masks(graph: DependencyGraph, node_name: str, keep: dict[int, torch.Tensor]):
    """Per-dimension kept masks (None = untouched) of a node of the exported graph."""
    dims = graph.tracer.node_dims.get(node_name) or []
    return [graph.tracer.atoms.keep_mask(a, keep) if keep else None for a in dims]


def slice_tensor(t: torch.Tensor, masks: list[torch.Tensor | None]) -> torch.Tensor:
    for dim, mask in enumerate(masks):
        if mask is not None and not bool(mask.all()):
            t = t.index_select(dim, mask.nonzero().flatten().to(t.device))
    return t


def kept_size(graph: DependencyGraph, atom: int, keep: dict[int, torch.Tensor]) -> int:
    mask = graph.tracer.atoms.keep_mask(atom, keep)
    return graph.tracer.atoms.size(atom) if mask is None else int(mask.sum())


def set_tensor(model: nn.Module, fqn: str, value: torch.Tensor, kind: str) -> None:
    module_name, _, attr = fqn.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if kind == "parameter":
        old = module._parameters[attr]
        if not isinstance(value, nn.Parameter):  # one Parameter given to several names stays one
            value = nn.Parameter(value, requires_grad=old.requires_grad)
        module._parameters[attr] = value
    elif attr in module._buffers:
        module._buffers[attr] = value
    else:
        setattr(module, attr, value)


def slice_parameters(
    model: nn.Module, graph: DependencyGraph, keep: dict[int, torch.Tensor]
) -> None:
    """Replace every parameter/buffer/constant whose dims lose channels by its kept slice.

    Tied tensors (one tensor under several names) are sliced once and re-tied everywhere.
    """
    aliases: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases[id(p)].append((name, "parameter"))
    for name, b in model.named_buffers(remove_duplicate=False):
        aliases[id(b)].append((name, "buffer"))
    done: set[int] = set()
    tracer = graph.tracer
    originals = {fqn: _lookup(model, fqn) for fqn, _ in tracer.placeholder_target.values()}
    for node_name, (fqn, kind) in tracer.placeholder_target.items():
        masks = dim_masks(graph, node_name, keep)
        if all(m is None or bool(m.all()) for m in masks):
            continue
        current = originals[fqn]
        if current is None or id(current) in done:
            continue
        done.add(id(current))
        with torch.no_grad():
            new = slice_tensor(current.detach(), masks)  # index_select copies
        if isinstance(current, nn.Parameter):  # one object for every name, as before
            new = nn.Parameter(new, requires_grad=current.requires_grad)
        for name, k in aliases.get(id(current), [(fqn, kind)]):
            set_tensor(model, name, new, k)
            _slice_weight_mask(model, name, current.shape, masks)


def _slice_weight_mask(model: nn.Module, fqn: str, shape: torch.Size, masks) -> None:
    """An unstructured mask (`pk.sparsify`'s `weight_mask` buffer) loses the channels its
    weight lost; it is not in the exported graph (its hook stays out of tracing)."""
    mask = _lookup(model, fqn + MASK_SUFFIX)
    if mask is not None and mask.shape == shape:
        set_tensor(model, fqn + MASK_SUFFIX, slice_tensor(mask, masks), "buffer")


def _lookup(model: nn.Module, fqn: str) -> torch.Tensor | None:
    module_name, _, attr = fqn.rpartition(".")
    value = getattr(_submodule(model, module_name), attr, None)
    return value if isinstance(value, torch.Tensor) else None


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    """The module called `name` ("" for `model` itself), or None if there is none."""
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        return None


# ------------------------------------------------------------------ module attributes
def update_module_attributes(model: nn.Module, graph: DependencyGraph, keep) -> list[str]:
    """Bring size-carrying attributes in line with the sliced tensors; returns what the user
    should be told (configs that cannot describe the result)."""
    group_counts = _group_counts(graph, keep)
    inputs = _input_sizes(graph, keep)
    known = set()
    for name, module in model.named_modules():
        if _update_known(name, module, group_counts, inputs.get(name)):
            known.add(name)
    literals = _literal_changes(graph, keep)
    bound = _update_bound_attributes(model, graph, keep, skip=known)
    _update_literal_attributes(model, graph, literals, skip=known, bound=bound)
    return update_config_sizes(model, size_map(graph, keep, literals))


def _group_counts(graph: DependencyGraph, keep) -> dict[str, int]:
    """New `groups` of conv / group-norm modules, from the group atoms of their graph nodes."""
    out: dict[str, int] = {}
    tracer = graph.tracer
    for node in graph.exported.graph.nodes:
        note = tracer.notes.get(node.name, {})
        if "groups_atom" not in note:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            module = list(stack.values())[-1][0]
            out[module] = kept_size(graph, note["groups_atom"], keep)
    return out


def _input_sizes(graph: DependencyGraph, keep) -> dict[str, tuple[int, ...]]:
    """Per module, the pruned sizes of the tensor its first op reads: where a norm without
    affine parameters or running statistics learns its width (nothing else holds it)."""
    out: dict[str, tuple[int, ...]] = {}
    dims = graph.tracer.node_dims
    for node in graph.exported.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        source = node.args[0] if node.op == "call_function" and node.args else None
        if not stack or not isinstance(source, fx.Node) or not dims.get(source.name):
            continue
        module = list(stack.values())[-1][0]
        if module not in out:
            out[module] = tuple(kept_size(graph, atom, keep) for atom in dims[source.name])
    return out


def _update_known(
    name: str, m: nn.Module, group_counts: dict[str, int], input_sizes: tuple[int, ...] | None
) -> bool:
    """Set the size attributes of layer types whose sizes follow from their tensors (or, for
    norms without any, from the pruned sizes of their input); returns whether `m` is one (its
    attributes are then exact and no literal may override them)."""
    if isinstance(m, nn.modules.conv._ConvNd):
        if name in group_counts:
            m.groups = group_counts[name]
        w = _weight(m)
        if m.transposed:
            m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        else:
            m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = _weight(m).shape
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.numel()
    elif isinstance(m, nn.Bilinear):
        m.out_features, m.in1_features, m.in2_features = m.weight.shape
    elif isinstance(m, (nn.modules.batchnorm._NormBase)):
        ref = m.weight if m.weight is not None else m.running_mean
        if ref is not None:
            m.num_features = ref.shape[0]
        elif input_sizes is not None and len(input_sizes) > 1:  # channels on dim 1
            m.num_features = input_sizes[1]
    elif isinstance(m, nn.GroupNorm):
        if m.weight is not None:
            m.num_channels = m.weight.shape[0]
        elif input_sizes is not None and len(input_sizes) > 1:
            m.num_channels = input_sizes[1]
        if name in group_counts:
            m.num_groups = group_counts[name]
    elif isinstance(m, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        if getattr(m, "weight", None) is not None:
            m.normalized_shape = tuple(m.weight.shape)
        elif input_sizes is not None and len(input_sizes) >= len(m.normalized_shape):
            m.normalized_shape = input_sizes[len(input_sizes) - len(m.normalized_shape) :]
    elif isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = m.weight.shape
    elif isinstance(m, nn.MultiheadAttention):
        _update_mha(m)
        return False  # head_dim follows the literals of its ops
    elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # Hugging Face GPT-2: [in, out]
        m.nf = m.weight.shape[1]
    else:
        return False
    return True


def _weight(m: nn.Module) -> torch.Tensor:
    """The weight as sliced: the legacy `nn.utils.weight_norm` recomputes `weight` from
    `weight_v` only at the next forward, so until then `weight_v` holds the new shape."""
    if "weight" not in m._parameters and isinstance(getattr(m, "weight_v", None), torch.Tensor):
        return m.weight_v
    return m.weight


def _update_mha(m: nn.MultiheadAttention) -> None:
    m.embed_dim = m.out_proj.weight.shape[0]
    if m._qkv_same_embed_dim:
        m.kdim = m.vdim = m.embed_dim
    else:
        m.kdim = m.k_proj_weight.shape[1]
        m.vdim = m.v_proj_weight.shape[1]


SizeLiteral = tuple[int | None, int, int]  # (atom, or None for a derived size; old size; new size)


def _literal_changes(graph: DependencyGraph, keep) -> dict[str, list[SizeLiteral]]:
    """Per module (by qualified name, "" for the root): the literal sizes of its ops."""
    changes: dict[str, list[SizeLiteral]] = defaultdict(list)
    tracer = graph.tracer
    for node in graph.exported.graph.nodes:
        if node.op != "call_function" or node.name not in tracer.notes:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        changes[module] += literal_sizes(graph, node, keep)
    return changes


def _value_map(literals: list[SizeLiteral], exclude: set[int] = frozenset()) -> dict[int, set[int]]:
    """old size -> the sizes it becomes, over `literals` but those of the `exclude` atoms."""
    mapping: dict[int, set[int]] = defaultdict(set)
    for atom, old, new in literals:
        if atom is None or atom not in exclude:
            mapping[old].add(new)
    return mapping


def _update_literal_attributes(
    model: nn.Module,
    graph: DependencyGraph,
    changes: dict[str, list[SizeLiteral]],
    *,
    skip: set[str],
    bound: set[tuple[str, str]],
) -> None:
    """Integer attributes that show up as shape literals in a module's ops (num_heads, head_dim,
    hidden_dim...) follow the new sizes, and so do the integers of tuple attributes (a layer
    scale's `shape = (dim, 1, 1)`). Ambiguous values are left alone; verification decides.
    Literals the source shows come from an attribute (`view(b, n, self.inner_dim)`) or are
    inferred (`reshape(*shape, -1)`) say nothing about the module's other attributes of the same
    value (T5's `d_model` and `relative_attention_num_buckets` beside its pruned inner size).
    """
    explained = literal_sources(graph).explained
    for module_name, literals in changes.items():
        if module_name in skip:
            continue
        module = _submodule(model, module_name)
        if module is None:
            continue
        mapping = _value_map(literals, explained.get(module_name, set()))
        for attr, value in list(vars(module).items()):
            if (module_name, attr) in bound:
                continue
            if type(value) is int:
                setattr(module, attr, _new_size(value, mapping))
            elif type(value) is tuple and value and all(type(v) is int for v in value):
                setattr(module, attr, tuple(_new_size(v, mapping) for v in value))


def _update_bound_attributes(
    model: nn.Module, graph: DependencyGraph, keep, *, skip: set[str]
) -> set[tuple[str, str]]:
    """Attributes the source shows an op's size is taken from (`view(b, n, self.num_heads, -1)`)
    get that size exactly, even where their value alone was ambiguous; returns them."""
    done = set()
    for module_name, attrs in literal_sources(graph).bound.items():
        module = _submodule(model, module_name) if module_name not in skip else None
        if module is None:
            continue
        for attr, atoms in attrs.items():
            olds = {graph.tracer.atoms.size(a) for a in atoms}
            news = {kept_size(graph, a, keep) for a in atoms}
            value = getattr(module, attr, None)
            one = type(value) is tuple and len(value) == 1  # `view(self.shape)`, shape = (dim,)
            if len(news) == 1 and olds == ({value[0]} if one else {value}):
                setattr(module, attr, (news.pop(),) if one else news.pop())
                done.add((module_name, attr))
    for module_name, attrs in literal_sources(graph).sequences.items():
        module = _submodule(model, module_name) if module_name not in skip else None
        for attr, calls in attrs.items() if module is not None else ():
            if _set_sequence(module, attr, calls, graph, keep):
                done.add((module_name, attr))
    for module_name, attrs in literal_sources(graph).factors.items():
        module = _submodule(model, module_name) if module_name not in skip else None
        for attr, atoms in attrs.items() if module is not None else ():
            if (module_name, attr) not in done and _set_factor(module, attr, atoms, graph, keep):
                done.add((module_name, attr))
    return done


def _set_factor(module: nn.Module, attr: str, atoms: set[int], graph, keep) -> bool:
    """`module.<attr>`, a factor of sizes written `n * self.<attr>` (heads folded into the
    batch), shrinks with them: the run-time factor `n` (size / attr) stays, as batches do."""
    value = getattr(module, attr, None)
    if type(value) is not int or value < 1:
        return False
    news = {scaled_factor(graph, atom, keep, value) for atom in atoms}
    if None in news or len(news) != 1:
        return False
    setattr(module, attr, news.pop())
    return True


def scaled_factor(graph: DependencyGraph, atom: int, keep, factor: int) -> int | None:
    """What `factor` becomes when `atom`, of size `n * factor` with `n` a run-time size that
    stays (a batch), shrinks to its kept size; None when the sizes do not divide."""
    old, new = graph.tracer.atoms.size(atom), kept_size(graph, atom, keep)
    other, rest = divmod(old, factor)
    if rest or new % other:
        return None
    return new // other


def _set_sequence(module: nn.Module, attr: str, calls: list[list[int]], graph, keep) -> bool:
    """`module.<attr>`, a list or tuple of the sizes of every call in `calls` (the atoms of each
    size), becomes their new sizes, when all calls agree."""
    value = getattr(module, attr, None)
    if type(value) not in (list, tuple) or not all(type(v) is int for v in value):
        return False
    sizes = graph.tracer.atoms.size
    if any([sizes(a) for a in atoms] != list(value) for atoms in calls):
        return False
    news = {tuple(kept_size(graph, a, keep) for a in atoms) for atoms in calls}
    if len(news) != 1:
        return False
    setattr(module, attr, type(value)(news.pop()))
    return True


def _new_size(value: int, mapping: dict[int, set[int]]) -> int:
    """The size `value` becomes, or `value` itself when it is not a literal or is ambiguous."""
    new = mapping.get(value, ())
    return next(iter(new)) if len(new) == 1 else value


def size_map(
    graph: DependencyGraph, keep, literals: dict[str, list[SizeLiteral]]
) -> dict[int, set[int]]:
    """Every integer size in the graph's literals (`literals`, from `_literal_changes`) and
    inputs: old -> the sizes it becomes."""
    mapping = _value_map([lit for per_module in literals.values() for lit in per_module])
    tracer = graph.tracer
    for name in tracer.placeholder_target:
        for atom in tracer.node_dims.get(name) or []:
            mapping[tracer.atoms.size(atom)].add(kept_size(graph, atom, keep))
    return mapping


def literal_sizes(graph: DependencyGraph, node, keep) -> list[SizeLiteral]:
    """(atom, old, new) of a node's integer literals: those that shrink, and channel sizes that
    stay (a head_dim of 4 kept beside 4 KV heads becoming 3 makes an attribute of 4 ambiguous;
    a sequence length of 4 does not)."""
    tracer = graph.tracer
    note = tracer.notes.get(node.name, {})
    atoms: list[int] = []
    if "literal_shape" in note or "literal_unflatten" in note:
        dims = tracer.node_dims.get(node.name) or []
        atoms += [a for a, size in zip(dims, tracer.shape(node) or []) if isinstance(size, int)]
    if "groups_atom" in note:
        atoms.append(note["groups_atom"])
    if "literal_dims" in note:
        atoms += note["literal_dims"][1]
    if note.get("literal_slice") is not None:
        atoms.append(note["literal_slice"])
    out: list[SizeLiteral] = [(a, tracer.atoms.size(a), kept_size(graph, a, keep)) for a in atoms]
    out = [(a, old, new) for a, old, new in out if new != old or _is_channel(graph, a)]
    if "literal_split" in note:
        out += _split_sizes(graph, node, note["literal_split"], keep)
    return out


def _split_sizes(graph: DependencyGraph, node, dim: int, keep) -> list[SizeLiteral]:
    """Literal sizes of a split along `dim`: each piece's (split_with_sizes), or the one size of
    every piece (GPT-2 splits q, k, v by `split_size`), and the size split, from which code often
    derives them (`chs // 2`, `[self.pdim, self.dim - self.pdim]`)."""
    tracer = graph.tracer
    pieces = tracer.tuple_node_dims.get(node.name) or []
    sizes: list[SizeLiteral] = [
        (d[dim], tracer.atoms.size(d[dim]), kept_size(graph, d[dim], keep)) for d in pieces if d
    ]
    if target_name(node) == "aten.split_with_sizes.default":  # and the size split (`self.dim`)
        return [*sizes, (None, sum(o for _, o, _ in sizes), sum(n for _, _, n in sizes))]
    if target_name(node) != "aten.split.Tensor" or len({(o, n) for _, o, n in sizes}) != 1:
        return []
    atom, old, new = sizes[0]
    n = len(pieces)
    return [(atom, old, new), (None, old * n, new * n)] if all(pieces) else [(atom, old, new)]


def _is_channel(graph: DependencyGraph, atom: int) -> bool:
    """Whether `atom` is made of parameter channels only (prunable or frozen): not batch, sequence,
    or a product with them such as batch x heads."""
    tracer = graph.tracer
    channels = graph.cache.get("parameter_leaves")
    if channels is None:
        channels = graph.cache["parameter_leaves"] = {
            leaf
            for name, (_, kind) in tracer.placeholder_target.items()
            if kind == "parameter"
            for a in tracer.node_dims.get(name) or []
            for leaf in tracer.atoms.leaves(a)
        }
    return all(leaf in channels for leaf in tracer.atoms.leaves(atom))


def apply_keep(
    model: nn.Module, graph: DependencyGraph, keep: dict[int, torch.Tensor]
) -> list[str]:
    """Slice tensors and update attributes of `model` in place; returns warnings for the user."""
    slice_parameters(model, graph, keep)
    return update_module_attributes(model, graph, keep)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything `restore` needs to undo surgery: tensors, the attribute dicts and the fields of
    configs (shared objects that surgery edits in place)."""
    state = {}
    for name, module in model.named_modules():
        attributes = {k: v for k, v in vars(module).items() if not k.startswith("_")}
        state[name] = {
            "dict": attributes,
            "_parameters": dict(module._parameters),
            "_buffers": dict(module._buffers),
            "configs": [(c, dict(vars(c))) for c in attributes.values() if is_config(c)],
        }
    return state


def restore(model: nn.Module, state: dict[str, Any]) -> None:
    for name, module in model.named_modules():
        if name not in state:
            continue
        saved = state[name]
        module._parameters.clear()
        module._parameters.update(saved["_parameters"])
        module._buffers.clear()
        module._buffers.update(saved["_buffers"])
        for k, v in saved["dict"].items():
            object.__setattr__(module, k, v)
        for config, fields in saved["configs"]:
            vars(config).update(fields)
