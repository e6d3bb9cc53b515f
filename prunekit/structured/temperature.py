"""Keep the attention softmax temperature when head dims shrink.

Scores are q·k / sqrt(d). Removing head dims removes terms of q·k, which is what pruning means,
but code that derives the scale from the head size (the default of scaled_dot_product_attention,
or `(C // heads) ** -0.5` at run time) would also change the temperature. We fold
sqrt(d_new / d_old) into the rows of the projection that produces q, so the pruned model keeps
1 / sqrt(d_old). Which rows produce q is found by a probe: the projection's output is replaced by
its row indices and read back where q is formed.

The projection's weight may be a piece of a parameter (nn.MultiheadAttention splits its packed
in_proj_weight and in_proj_bias for cross-attention): the fold then names the parameter's rows.
A norm over the head dim between the projection and q (QK-norm) would normalise a factor away,
so the fold goes on the norm's weight (and bias) instead; the norm's statistics over the kept
dims are what the masked reference computes too. Scores are bilinear in q and k, so where q has
no weight to take the factor (a norm without one) k's side takes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from prunekit.graph.capture import at_batch
from prunekit.graph.rules import target_name

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

SHAPE_OPS = {
    "aten.view.default",
    "aten.reshape.default",
    "aten._unsafe_view.default",
    "aten.permute.default",
    "aten.transpose.int",
    "aten.unflatten.int",
    "aten.flatten.using_ints",
    "aten.select.int",
    "aten.slice.Tensor",
    "aten.contiguous.default",
    "aten.clone.default",
    "aten.unsqueeze.default",
    "aten.squeeze.dim",
    "aten.squeeze.dims",
    "aten.alias.default",
    "getitem",
    "aten.split.Tensor",
    "aten.split_with_sizes.default",
    "aten.chunk.default",
    "aten.unbind.int",
    "aten.t.default",
    "aten.expand.default",
}
# Pooling of q over tokens (Hiera pools q by a max over strided positions): a positive factor on
# q's rows passes through unchanged, like a shape op.
POOLING_OPS = {
    "aten.amax.default",
    "aten.amin.default",
    "aten.max.dim",
    "aten.mean.dim",
    "aten.sum.dim_IntList",
    "aten.avg_pool1d.default",
    "aten.avg_pool2d.default",
    "aten.max_pool1d.default",
    "aten.max_pool2d.default",
    "aten.max_pool2d_with_indices.default",
}
SCALAR_OPS = {"aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar"}
PROJECTIONS = {"aten.linear.default", "aten.addmm.default"}  # addmm: Conv1D (x @ W + b)
# Projections with channels in dim 1: convolutions, and the eval-mode batch norm after one
# (iFormer's q = BN(conv(x))), where the fold scales the norm's weight and bias.
CHANNEL_PROJECTIONS = {
    "aten.conv1d.default",
    "aten.conv2d.default",
    "aten.convolution.default",
    "aten.batch_norm.default",
    "aten._native_batch_norm_legit_no_training.default",
}

# dtype casts pass a factor unchanged (norms written out compute in float32)
CASTS = {
    "aten._to_copy.default",
    "aten.to.dtype",
    "aten.to.dtype_layout",
    "aten.type_as.default",
}
# Norms over the head dim (QK-norm, as in Qwen3, OLMo2, timm's qk_norm): their statistics undo
# a factor on their input, so it goes on their weight and bias (the indices of those args).
NORMS = {
    "aten.layer_norm.default": (2, 3),
    "aten.native_layer_norm.default": (2, 3),
    "aten.rms_norm.default": (2, None),
}
SPLITS = {"aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default"}


@dataclass
class Fold:
    """Multiply rows `rows` of parameter `weight` (and `bias`) by `factor`."""

    weight: str
    bias: str | None
    rows: list[int]
    factor: float
    manual: bool  # scale written in user code (may or may not follow the head size)
    module: str = ""  # the module running the attention
    old_dim: int = 0
    new_dim: int = 0
    weight_dim: int = 0  # the weight's output-feature dim (1 for x @ W layouts)


class _Probe(fx.Interpreter):
    """One pass over the graph: each source (a projection) outputs its own row indices, and the
    values at each read point (where q is formed) are recorded; stops once all are read."""

    def __init__(self, gm, sources: dict[str, tuple[int, int]], reads: set[str]) -> None:
        super().__init__(gm)
        self.sources, self.pending = sources, set(reads)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.sources:
            # row indices in the graph's own dtype (exact up to 2**24 rows in float32; the
            # values flow on through later layers, which must still run), along the rows' dim
            rows, dim = self.sources[n.name]
            first = out[0] if isinstance(out, (tuple, list)) else out
            shape = [1] * first.dim()
            shape[dim] = rows
            index = torch.arange(rows, dtype=torch.float64).to(first.dtype).view(shape)
            index = index.expand(first.shape).clone()
            out = (index, *out[1:]) if isinstance(out, (tuple, list)) else index
        if n.name in self.pending:
            self.values[n.name] = out
            self.pending.discard(n.name)
            if not self.pending:
                raise _Done
        return out


class _Done(Exception):
    pass


def probe_rows(
    graph: DependencyGraph, sources: dict[str, tuple[int, int]], reads: set[str]
) -> dict:
    """Row indices of each source projection that reach each read point (cached per graph)."""
    key = ("probe", tuple(sorted(sources.items())), tuple(sorted(reads)))
    if key not in graph.cache:
        flat = graph.exported._graph_module_flat_inputs(*_probe_inputs(graph))
        probe = _Probe(graph.exported.graph_module, sources, reads)
        try:
            with torch.no_grad():
                probe.run(*flat, enable_io_processing=False)
        except _Done:
            pass
        graph.cache[key] = {
            name: sorted({int(v) for v in value.unique().tolist()})
            for name, value in probe.values.items()
            if value.is_floating_point() and value.dtype in (torch.float32, torch.float64)  # exact
        }
    return graph.cache[key]


def _probe_inputs(graph: DependencyGraph) -> tuple[tuple, dict]:
    """The traced inputs; a recorded graph runs at any batch, so one example is enough there."""
    args, kwargs = graph.export_args, graph.export_kwargs
    if getattr(graph.exported, "batch_tag", None) is None:
        return args, kwargs  # an export: its batch range starts at 2
    return at_batch(args, kwargs, 1)


def _is_scalar_op(node: fx.Node) -> bool:
    return _scaled_operand(node) is not None


def _scaled_operand(node: fx.Node) -> fx.Node | None:
    """The tensor a multiplication or division scales by one number: a Python number, or a
    one-element tensor (DeBERTa divides k by `torch.sqrt(torch.tensor(d) * factor)`); None for
    other ops. A division scales its dividend only."""
    if node.op != "call_function" or target_name(node) not in SCALAR_OPS:
        return None
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if len(tensors) == 1:
        return tensors[0]
    if len(tensors) != 2 or len(node.args) != 2:
        return None
    x, s = node.args
    if _one_element(s) and not _one_element(x):
        return x
    if target_name(node).startswith("aten.mul") and _one_element(x) and not _one_element(s):
        return s
    return None


def _one_element(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and all(size == 1 for size in val.shape)


@dataclass
class _Site:
    """Where a factor on q (or k) can be folded: a node whose output rows are the rows of a
    parameter (`weight`, `bias`), read back at `read` where q is formed."""

    node: fx.Node  # a projection, a norm over the head dim, or a product with a parameter
    read: fx.Node
    weight: fx.Node
    bias: fx.Node | None
    weight_dim: int  # the weight's dim holding the rows (1 for x @ W layouts)
    channel_dim: int  # the node output's dim holding the rows


def _walk_to_projection(
    node: fx.Node, graph: DependencyGraph, params: dict[str, str | None]
) -> tuple[_Site | None, bool]:
    """From q back to where a factor on its rows can be folded; returns (that site, or None if
    there is none, and whether a scalar op was passed on the way)."""
    chain: list[fx.Node] = []
    scaled = False
    cur = node
    while True:
        name = target_name(cur) if cur.op == "call_function" else ""
        if name in PROJECTIONS or name in CHANNEL_PROJECTIONS or name in NORMS:
            site = _site(cur, name)
            break
        product = _parameter_product(cur, graph, params)
        if product is not None:
            site = product
            break
        if name in SHAPE_OPS or name in POOLING_OPS or name in CASTS:
            chain.append(cur)
        elif _is_scalar_op(cur):
            scaled = True
            chain.append(cur)
            cur = _scaled_operand(cur)
            continue
        else:  # a norm without weight lands here: its statistics would undo a factor before it
            return None, scaled
        cur = next(a for a in cur.args if isinstance(a, fx.Node))
    if site is None:
        return None, scaled
    # read where q's elements are all formed: the last shape op before any scalar op
    read = cur
    for n in reversed(chain):
        if _is_scalar_op(n):
            break
        read = n
    site.read = read
    return site, scaled


def _site(node: fx.Node, name: str) -> _Site | None:
    """The fold site of a projection or norm node; None without a weight to fold into."""
    if name == "aten.addmm.default":  # bias + x @ W, W: [in, out]
        weight, bias, weight_dim, channel_dim = node.args[2], node.args[0], 1, -1
    elif name in NORMS:  # norm(x) * weight + bias over the last dim (QK-norm)
        w, b = NORMS[name]
        shape = node.args[1]
        if not isinstance(shape, (list, tuple)) or len(shape) != 1:
            return None
        weight = node.args[w] if len(node.args) > w else None
        bias = node.args[b] if b is not None and len(node.args) > b else None
        weight_dim, channel_dim = 0, -1
    else:  # linear / conv (x, W, b), W: [out, ...]; batch norm (x, weight, bias, ...)
        weight = node.args[1]
        bias = node.args[2] if len(node.args) > 2 else None
        weight_dim, channel_dim = 0, (1 if name in CHANNEL_PROJECTIONS else -1)
    if not isinstance(weight, fx.Node):
        return None  # a norm without affine weight: nothing to fold into
    bias = bias if isinstance(bias, fx.Node) else None
    return _Site(node, node, weight, bias, weight_dim, channel_dim)


def _parameter_product(
    node: fx.Node, graph: DependencyGraph, params: dict[str, str | None]
) -> _Site | None:
    """`weight * x` with a 1-d parameter along the last dim (a norm written out, as Hugging
    Face's RMSNorm classes are): the factor goes on the parameter."""
    if node.op != "call_function" or target_name(node) != "aten.mul.Tensor":
        return None
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    t = graph.tracer
    out = t.shape(node)
    for p in node.args:
        source = p
        while source.op == "call_function" and target_name(source) in CASTS:
            source = source.args[0]
        shape = t.shape(p)
        if params.get(source.name) is None or not shape or len(shape) != 1:
            continue
        if out and isinstance(shape[0], int) and shape[0] == out[-1]:
            return _Site(node, node, p, None, 0, -1)
    return None


def _attention_queries(graph: DependencyGraph, keep) -> list[tuple[fx.Node, tuple, int, bool]]:
    """(attention node, (q, k) inputs, head-dim atom, manual?) of attentions whose head dim
    shrinks. The scores are bilinear in q and k, so a factor on either keeps the temperature.

    `manual` marks scales written in user code: True for an explicit sdpa `scale` equal to the
    default formula; None where only a scalar multiplication of q on its way from the projection
    can carry the scale (a matmul feeding a softmax, or sdpa with another explicit scale).
    """
    t = graph.tracer
    out = []
    for node in graph.exported.graph.nodes:
        name = target_name(node) if node.op == "call_function" else ""
        if name == "aten.scaled_dot_product_attention.default":
            q, k = node.args[0], node.args[1]
            atom = t.node_dims[q.name][-1]
            scale = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
            if scale is None:
                out.append((node, (q, k), atom, False))
            elif isinstance(scale, float) and abs(scale * t.atoms.size(atom) ** 0.5 - 1) < 1e-6:
                out.append((node, (q, k), atom, True))
            else:  # e.g. scale=1.0 with q scaled in user code before the call (Whisper)
                out.append((node, (q, k), atom, None))
        elif name in ("aten.matmul.default", "aten.bmm.default") and _feeds_softmax(node):
            q, k = node.args[0], node.args[1]
            out.append((node, (q, k), t.node_dims[q.name][-1], None))
        elif name == "aten.einsum.default" and _feeds_softmax(node):
            found = _einsum_scores(node)
            if found is not None and found[0][0].name in t.node_dims:
                (q, k), position = found
                out.append((node, (q, k), t.node_dims[q.name][position], None))
    result = []
    for node, operands, atom, manual in out:
        mask = t.atoms.keep_mask(atom, keep)
        if mask is not None and not bool(mask.all()):
            result.append((node, operands, atom, manual))
    return result


def _einsum_scores(node: fx.Node) -> tuple[tuple[fx.Node, fx.Node], int] | None:
    """((q, k), position of the contracted dim in q) of an einsum of two operands contracting
    one dim (`bhqd,bhkd->bhqk`); None for other einsums."""
    equation, operands = node.args[0], node.args[1]
    if not isinstance(equation, str) or len(operands) != 2:
        return None
    equation = equation.replace(" ", "")
    if "." in equation or "->" not in equation:
        return None
    lhs, rhs = equation.split("->")
    specs = lhs.split(",")
    if len(specs) != 2 or not all(isinstance(o, fx.Node) for o in operands):
        return None
    contracted = (set(specs[0]) & set(specs[1])) - set(rhs)
    if len(contracted) != 1 or any(len(set(s)) != len(s) for s in specs):
        return None
    return (operands[0], operands[1]), specs[0].index(contracted.pop())


def _feeds_softmax(node: fx.Node, depth: int = 6) -> bool:
    """Whether the scores reach a softmax through biases, masks, scalings and reshapes."""
    for user in node.users:
        name = target_name(user)
        if "softmax" in name:
            return True
        passes = name.startswith("aten.add") or name in SCALAR_OPS or "masked_fill" in name
        if depth and (passes or name in SHAPE_OPS):
            if _feeds_softmax(user, depth - 1):
                return True
    return False


def _scales_scores(node: fx.Node, depth: int = 6) -> bool:
    """Whether the scores of a matmul are multiplied or divided by a scalar on their way to the
    softmax (`q @ k.T / math.sqrt(k.size(-1))`, nanoGPT's `* (1.0 / math.sqrt(...))`)."""
    for user in node.users:
        name = target_name(user)
        if "softmax" in name:
            continue
        if _is_scalar_op(user):
            return True
        passes = name.startswith("aten.add") or "masked_fill" in name or name in SHAPE_OPS
        if depth and passes and _scales_scores(user, depth - 1):
            return True
    return False


def find_folds(graph: DependencyGraph, keep) -> list[Fold]:
    """Folds that keep every shrinking attention's temperature (empty if none shrink)."""
    t = graph.tracer
    params = {
        n.name: t.placeholder_target.get(n.name, (None, None))[0]
        for n in graph.exported.graph.nodes
        if n.op == "placeholder"
    }
    candidates = []
    for node, operands, atom, manual in _attention_queries(graph, keep):
        walks = [_walk_to_projection(x, graph, params) for x in operands]
        if manual is None and not (any(s for _, s in walks) or _scales_scores(node)):
            continue  # no scale in user code: nothing derived from the head size
        manual = manual is not False
        for site, _ in walks:  # q first; k where q has nowhere to take it (a norm without weight)
            if site is None:
                continue
            weight = _parameter_rows(graph, site.weight, site.weight_dim, params)
            bias = _parameter_rows(graph, site.bias, 0, params) if site.bias else None
            pieces = _bias_pieces(graph, site.bias, params) if site.bias and not bias else []
            if weight is not None:
                candidates.append((node, atom, manual, site, weight, bias, pieces))
                break
    if not candidates:
        return []
    sources = {c[3].node.name: (_site_rows(graph, c[3]), c[3].channel_dim) for c in candidates}
    used = probe_rows(graph, sources, {c[3].read.name for c in candidates})
    folds = []
    for node, atom, manual, site, weight, bias, pieces in candidates:
        if site.read.name not in used:
            continue
        rows = used[site.read.name]
        mask = t.atoms.keep_mask(atom, keep)
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        fold = Fold(
            weight=weight[0],
            bias=bias[0] if bias and bias[1] == weight[1] else None,
            rows=[r + weight[1] for r in rows],
            factor=(float(mask.sum()) / mask.numel()) ** 0.5,
            manual=manual,
            module=module,
            old_dim=mask.numel(),
            new_dim=int(mask.sum()),
            weight_dim=site.weight_dim,
        )
        folds.append(fold)
        if bias and fold.bias is None:  # q's bias at another offset than its weight (MHA)
            moved = [r + bias[1] for r in rows]
            folds.append(dataclasses.replace(fold, weight=bias[0], rows=moved, weight_dim=0))
        offset = 0
        for name, size in pieces:  # a bias concatenated from parts (BEiT's q_bias, k_bias...)
            local = [r - offset for r in rows if offset <= r < offset + size]
            if local:
                folds.append(dataclasses.replace(fold, weight=name, bias=None, rows=local))
            offset += size
    return folds


def _site_rows(graph: DependencyGraph, site: _Site) -> int:
    return int(graph.tracer.shape(site.weight)[site.weight_dim])


def _parameter_rows(
    graph: DependencyGraph, node: fx.Node, dim: int, params: dict[str, str | None]
) -> tuple[str, int] | None:
    """(parameter, offset) when `node` is rows `offset...` of a parameter along `dim`: the
    parameter itself, a cast, or a piece of a split, chunk or slice of it along `dim`
    (nn.MultiheadAttention splits in_proj_weight and in_proj_bias into q, k, v); else None."""
    t = graph.tracer
    offset = 0
    while params.get(node.name) is None:
        if node.op != "call_function":
            return None
        name = target_name(node)
        if name in CASTS:
            node = node.args[0]
            continue
        split = node.args[0] if name == "getitem" else None
        if isinstance(split, fx.Node) and target_name(split) in SPLITS:
            source = split.args[0]
            start = _piece_offset(split, node.args[1], t.shape(source), dim)
            if start is None:
                return None
            offset += start
        elif name == "aten.slice.Tensor":
            source = node.args[0]
            start = _slice_start(node, t.shape(source), dim)
            if start is None:
                return None
            offset += start
        else:
            return None
        node = source
    return params[node.name], offset


def _piece_offset(split: fx.Node, index: Any, shape: list | None, dim: int) -> int | None:
    """The first row of piece `index` of a split or chunk along `dim`; None when it is split
    along another dim or its sizes are not known."""
    if not shape or not all(isinstance(s, int) for s in shape) or not isinstance(index, int):
        return None
    arg = split.args[1]
    axis = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if not isinstance(axis, int) or axis % len(shape) != dim % len(shape):
        return None
    if target_name(split) == "aten.split_with_sizes.default":
        return sum(arg[:index]) if all(isinstance(s, int) for s in arg) else None
    if not isinstance(arg, int) or arg < 1:
        return None
    if target_name(split) == "aten.chunk.default":
        return index * -(-shape[dim] // arg)
    return index * arg  # aten.split.Tensor: pieces of `arg` rows


def _slice_start(node: fx.Node, shape: list | None, dim: int) -> int | None:
    """The first row of a unit-step slice along `dim`; None otherwise."""
    if not shape or not all(isinstance(s, int) for s in shape):
        return None
    args = list(node.args) + [None] * (5 - len(node.args))
    axis = args[1] if args[1] is not None else node.kwargs.get("dim", 0)
    start = args[2] if args[2] is not None else node.kwargs.get("start", 0)
    step = args[4] if args[4] is not None else node.kwargs.get("step", 1)
    if axis % len(shape) != dim % len(shape) or step != 1 or not isinstance(start, int):
        return None
    start = start + shape[dim] if start < 0 else start
    return min(max(start, 0), shape[dim])


def _bias_pieces(graph, bias_node, placeholders) -> list[tuple[str, int]]:
    """The parameters a computed bias concatenates, with their sizes, in order (`torch.cat((
    q_bias, k_bias, v_bias))`); [] otherwise (verification judges a fold of the weight alone)."""
    if not isinstance(bias_node, fx.Node) or bias_node.name in placeholders:
        return []
    if target_name(bias_node) not in ("aten.cat.default", "aten.concat.default"):
        return []
    parts = bias_node.args[0]
    if len(bias_node.args) > 1 and bias_node.args[1] not in (0, -1):
        return []
    if not all(isinstance(p, fx.Node) and placeholders.get(p.name) for p in parts):
        return []
    return [(placeholders[p.name], int(graph.tracer.shape(p)[0])) for p in parts]


def apply_folds(model: nn.Module, folds: list[Fold]) -> None:
    """Scale the q rows (before slicing; indices are original rows). Out of place, so that a
    snapshot taken before still holds the original tensors."""
    from prunekit.structured.surgery import set_tensor

    with torch.no_grad():
        for f in folds:
            for name in (f.weight, f.bias):
                if name is None:
                    continue
                try:
                    p, kind = model.get_parameter(name), "parameter"
                except AttributeError:  # a buffer (BEiT's zero k_bias)
                    p, kind = model.get_buffer(name), "buffer"
                rows = torch.tensor(f.rows, device=p.device)
                dim = f.weight_dim if name == f.weight else 0
                new = p.detach().clone()
                new.index_copy_(dim, rows, new.index_select(dim, rows) * f.factor)
                set_tensor(model, name, new, kind)


def rescale_attributes(model: nn.Module, folds: list[Fold]) -> None:
    """Float attributes holding the old head size's scale (`self.scaling = head_dim ** -0.5`)
    follow the new head size, as a freshly built model would compute them; the folds keep the
    temperature."""
    for f in folds:
        if not f.manual:
            continue
        try:
            module = model.get_submodule(f.module) if f.module else model
        except AttributeError:
            continue
        for attr, value in list(vars(module).items()):
            if type(value) is not float:
                continue
            for power in (-0.5, 0.5):
                if abs(value - f.old_dim**power) <= 1e-9 * abs(value):
                    setattr(module, attr, f.new_dim**power)


FOLD_MODES = ("all", "required")


def select_folds(folds: list[Fold], mode: str) -> list[Fold]:
    """`all`: every fold; `required`: only where the graph itself derives the scale (sdpa)."""
    return folds if mode == "all" else [f for f in folds if not f.manual]


def fold_modes(folds: list[Fold]) -> list[str]:
    """Modes worth trying, most likely first (one when they coincide)."""
    return ["all"] if all(not f.manual for f in folds) else list(FOLD_MODES)
