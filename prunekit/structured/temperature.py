"""Keep the attention softmax temperature when head dims shrink.

Scores are q·k / sqrt(d). Removing head dims removes terms of q·k, which is what pruning means,
but code that derives the scale from the head size (the default of scaled_dot_product_attention,
or `(C // heads) ** -0.5` at run time) would also change the temperature. We fold
sqrt(d_new / d_old) into the rows of the projection that produces q, so the pruned model keeps
1 / sqrt(d_old). Which rows produce q is found by a probe: the projection's output is replaced by
its row indices and read back where q is formed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    if target_name(node) not in SCALAR_OPS:
        return False
    return sum(isinstance(a, fx.Node) for a in node.args) == 1


def _walk_to_projection(node: fx.Node) -> tuple[fx.Node, fx.Node, bool] | None:
    """From q back to a linear projection; returns (projection, read point, saw a scalar op)."""
    chain: list[fx.Node] = []
    scaled = False
    cur = node
    while True:
        name = target_name(cur) if cur.op == "call_function" else ""
        if name in PROJECTIONS or name in CHANNEL_PROJECTIONS:
            break
        if name in SHAPE_OPS or name in POOLING_OPS:
            chain.append(cur)
        elif _is_scalar_op(cur):
            scaled = True
            chain.append(cur)
        else:
            return None
        cur = next(a for a in cur.args if isinstance(a, fx.Node))
    # read where q's elements are all formed: the last shape op before any scalar op
    read = cur
    for n in reversed(chain):
        if _is_scalar_op(n):
            break
        read = n
    return cur, read, scaled


def _attention_queries(graph: DependencyGraph, keep) -> list[tuple[fx.Node, fx.Node, int, bool]]:
    """(attention node, q input, head-dim atom, manual?) of attentions whose head dim shrinks.

    `manual` marks scales written in user code: True for an explicit sdpa `scale` equal to the
    default formula; None where only a scalar multiplication of q on its way from the projection
    can carry the scale (a matmul feeding a softmax, or sdpa with another explicit scale).
    """
    t = graph.tracer
    out = []
    for node in graph.exported.graph.nodes:
        name = target_name(node) if node.op == "call_function" else ""
        if name == "aten.scaled_dot_product_attention.default":
            q = node.args[0]
            atom = t.node_dims[q.name][-1]
            scale = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
            if scale is None:
                out.append((node, q, atom, False))
            elif isinstance(scale, float) and abs(scale * t.atoms.size(atom) ** 0.5 - 1) < 1e-6:
                out.append((node, q, atom, True))
            else:  # e.g. scale=1.0 with q scaled in user code before the call (Whisper)
                out.append((node, q, atom, None))
        elif name in ("aten.matmul.default", "aten.bmm.default") and _feeds_softmax(node):
            out.append((node, node.args[0], t.node_dims[node.args[0].name][-1], None))
    result = []
    for node, q, atom, manual in out:
        mask = t.atoms.keep_mask(atom, keep)
        if mask is not None and not bool(mask.all()):
            result.append((node, q, atom, manual))
    return result


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
    placeholders = {
        n.name: t.placeholder_target.get(n.name, (None, None))[0]
        for n in graph.exported.graph.nodes
        if n.op == "placeholder"
    }
    candidates = []
    for node, q, atom, manual in _attention_queries(graph, keep):
        found = _walk_to_projection(q)
        if found is None:
            continue
        proj, read, scaled = found
        if manual is None and not (scaled or _scales_scores(node)):
            continue  # no scale in user code: nothing derived from the head size
        manual = manual is not False
        channel_dim = 1 if target_name(proj) in CHANNEL_PROJECTIONS else -1
        if target_name(proj) == "aten.addmm.default":  # bias + x @ W, W: [in, out]
            weight_node, bias_node, weight_dim = proj.args[2], proj.args[0], 1
        else:  # linear / conv (x, W, b), W: [out, ...]; batch norm (x, weight, bias, ...)
            weight_node = proj.args[1]
            bias_node = proj.args[2] if len(proj.args) > 2 else None
            weight_dim = 0
        if not isinstance(weight_node, fx.Node):
            continue  # a norm without affine weight: nothing to fold into
        weight = placeholders.get(weight_node.name)
        bias = placeholders.get(bias_node.name) if isinstance(bias_node, fx.Node) else None
        pieces = _bias_pieces(graph, bias_node, placeholders) if bias is None else []
        if weight is not None:
            rows = (int(t.shape(weight_node)[weight_dim]), channel_dim)
            candidates.append(
                (node, atom, manual, proj.name, read.name, rows, weight, bias, weight_dim, pieces)
            )
    if not candidates:
        return []
    used = probe_rows(graph, {c[3]: c[5] for c in candidates}, {c[4] for c in candidates})
    folds = []
    for node, atom, manual, _, read, _, weight, bias, weight_dim, pieces in candidates:
        if read not in used:
            continue
        mask = t.atoms.keep_mask(atom, keep)
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        fold = Fold(
            weight=weight,
            bias=bias,
            rows=used[read],
            factor=(float(mask.sum()) / mask.numel()) ** 0.5,
            manual=manual,
            module=module,
            old_dim=mask.numel(),
            new_dim=int(mask.sum()),
            weight_dim=weight_dim,
        )
        folds.append(fold)
        offset = 0
        for name, size in pieces:  # a bias concatenated from parts (BEiT's q_bias, k_bias...)
            local = [r - offset for r in fold.rows if offset <= r < offset + size]
            if local:
                folds.append(dataclasses.replace(fold, weight=name, bias=None, rows=local))
            offset += size
    return folds


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
