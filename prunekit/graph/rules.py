"""Op rules: how each ATen op couples the channel spaces of its inputs, outputs and parameters.

A rule receives the `Tracer` (which owns the atom table and the per-tensor dimension atoms) and an
FX node, and sets the atoms of the node's output dimensions. Ops without a rule block every space
they touch (see `Tracer.block_node`): we never guess that an unknown op is elementwise.

Rules are registered by ATen overload name (``"aten.conv2d.default"``) with `register_rule`, so
users can add their own (`prunekit.graph.rules.register_rule`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

if TYPE_CHECKING:
    from prunekit.graph.dependency import Tracer

Rule = Callable[["Tracer", fx.Node], None]
_RULES: dict[str, Rule] = {}

# How a node's masked reference is evaluated when one of its dimensions is pruned; see
# prunekit/structured/masked.py. "reduce" ops need kept-count aware statistics.
MASKED_KIND: dict[str, str] = {}


def register_rule(*targets: str, masked: str | None = None) -> Callable[[Rule], Rule]:
    """Register `fn` as the rule for the given ATen overload names (warns on overwrite)."""

    def wrap(fn: Rule) -> Rule:
        for target in targets:
            if target in _RULES and _RULES[target] is not fn:
                warnings.warn(f"overwriting the prunekit rule for {target}", stacklevel=2)
            _RULES[target] = fn
            if masked:
                MASKED_KIND[target] = masked
        return fn

    return wrap


def get_rule(target: str) -> Rule | None:
    return _RULES.get(target)


def list_rules(pattern: str = "*") -> list[str]:
    import fnmatch

    return sorted(t for t in _RULES if fnmatch.fnmatch(t, pattern))


def target_name(node: fx.Node) -> str:
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return str(t)
    return getattr(t, "__name__", str(t))


# ----------------------------------------------------------------------------- helpers
def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _broadcast(t: Tracer, node: fx.Node, inputs: list[Any]) -> None:
    """Elementwise with numpy broadcasting: equal-sized aligned dims are the same space."""
    out_shape = t.shape(node)
    if out_shape is None:
        return t.block_node(node, "non-tensor output")
    out: list[int | None] = [None] * len(out_shape)
    for inp in inputs:
        dims = t.dims(inp)
        if dims is None:
            continue
        shape = t.shape(inp)
        offset = len(out_shape) - len(shape)
        for i, (atom, size) in enumerate(zip(dims, shape)):
            j = i + offset
            if j < 0:
                continue
            if t.same_size(size, out_shape[j]):
                if out[j] is None:
                    out[j] = atom
                else:
                    t.union(out[j], atom)
            elif not t.same_size(size, 1):
                t.block(atom, "broadcast mismatch")
    t.set_dims(node, [a if a is not None else t.fresh(s) for a, s in zip(out, out_shape)])


def _identity(t: Tracer, node: fx.Node) -> None:
    _broadcast(t, node, [node.args[0]])


# ---------------------------------------------------------------------- elementwise
ELEMENTWISE = """
relu relu_ gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ hardswish hardswish_ hardsigmoid
hardsigmoid_ hardtanh hardtanh_ relu6 leaky_relu leaky_relu_ elu elu_ selu selu_ celu mish mish_
softplus logsigmoid neg exp log log1p sqrt rsqrt abs sin cos erf sign reciprocal square
clamp clamp_ clamp_min clamp_max dropout dropout_ feature_dropout alpha_dropout native_dropout
clone contiguous detach detach_ alias lift_fresh lift_fresh_copy _to_copy to type_as pow add add_ sub sub_ mul mul_
div div_ rsub maximum minimum where masked_fill masked_fill_ eq ne lt le gt ge logical_not
logical_and logical_or bitwise_not bitwise_and bitwise_or floor ceil round trunc fmod remainder
floor_divide lerp addcmul addcdiv copy_ fill_ zero_ zeros_like ones_like full_like empty_like
rand_like randn_like isnan isinf nan_to_num atan2 exp2 expm1 tan asin acos atan
sinh cosh asinh acosh atanh frac softshrink hardshrink threshold threshold_ gelu_backward
""".split()


def _register_elementwise() -> None:
    for name in ELEMENTWISE:
        packet = getattr(torch.ops.aten, name, None)
        if packet is None:
            continue
        for overload in packet.overloads():
            register_rule(f"aten.{name}.{overload}")(_broadcast_all)


def _broadcast_all(t: Tracer, node: fx.Node) -> None:
    tensors = [a for a in [*node.args, *node.kwargs.values()] if isinstance(a, fx.Node)]
    _broadcast(t, node, tensors)


_register_elementwise()


@register_rule("aten.prelu.default")
def _prelu(t: Tracer, node: fx.Node) -> None:
    """PReLU: elementwise. A per-channel slope (weight [C], C = x.size(1)) is sliced with the
    channel dim of x; one shared slope (weight [1]) applies to every channel and couples nothing.
    Any other weight shape is not what PReLU accepts: block rather than guess."""
    x, w = node.args[0], node.args[1]
    xs, ws = t.shape(x), t.shape(w)
    if len(ws) == 1 and len(xs) >= 2 and t.same_size(ws[0], xs[1]):
        t.union(t.dims(w)[0], t.dims(x)[1])
    elif not all(t.same_size(s, 1) for s in ws):
        return t.block_node(node, f"prelu weight {ws} for input {xs}")
    _identity(t, node)


# The decomposed PReLU: its weight is already shaped to broadcast ([C, 1, 1]), so plain numpy
# broadcasting couples it with the channel dim.
register_rule("aten._prelu_kernel.default")(_broadcast_all)


@register_rule(
    "aten.softmax.int",
    "aten._softmax.default",
    "aten.log_softmax.int",
    "aten._log_softmax.default",
    "aten._safe_softmax.default",
    masked="softmax",
)
def _softmax(t: Tracer, node: fx.Node) -> None:
    _identity(t, node)


# --------------------------------------------------------------------- conv / linear
@register_rule(
    "aten.conv1d.default",
    "aten.conv2d.default",
    "aten.conv3d.default",
    "aten.conv1d.padding",
    "aten.conv2d.padding",
    "aten.conv3d.padding",
)
def _conv(t: Tracer, node: fx.Node) -> None:
    x, w = node.args[0], node.args[1]
    bias = _arg(node, 2, "bias")
    groups = int(_arg(node, 6, "groups", 1))
    _conv_like(t, node, x, w, bias, groups, transposed=False)


@register_rule(
    "aten.conv_transpose1d.default", "aten.conv_transpose2d.input", "aten.conv_transpose3d.input"
)
def _conv_transpose(t: Tracer, node: fx.Node) -> None:
    x, w = node.args[0], node.args[1]
    bias = _arg(node, 2, "bias")
    groups = int(_arg(node, 6, "groups", 1))
    _conv_like(t, node, x, w, bias, groups, transposed=True)


@register_rule("aten.convolution.default")
def _convolution(t: Tracer, node: fx.Node) -> None:
    x, w, bias = node.args[0], node.args[1], node.args[2]
    transposed, groups = bool(node.args[6]), int(node.args[8])
    _conv_like(t, node, x, w, bias, groups, transposed=transposed)


def _conv_like(t: Tracer, node: fx.Node, x, w, bias, groups: int, transposed: bool) -> None:
    xd, wd = t.dims(x), t.dims(w)
    out_shape = t.shape(node)
    batched = len(out_shape) == len(t.shape(w))
    cdim = 1 if batched else 0
    group = t.atoms.new(groups)
    t.note(node, "groups_atom", group)
    # weight: [Cout, Cin/g, *k] (transposed: [Cin, Cout/g, *k])
    w_out, w_in = (wd[1], wd[0]) if transposed else (wd[0], wd[1])
    if transposed:
        # x channels = weight dim 0 = groups x (Cin/g); output = groups x weight dim 1
        per_group_in = t.atoms.new(t.size(wd[0]) // groups)
        t.union(wd[0], t.atoms.prod([group, per_group_in]))
        t.union(xd[cdim], wd[0])
        out_c = t.atoms.prod([group, w_out])
    else:
        per_group_out = t.atoms.new(t.size(wd[0]) // groups)
        t.union(wd[0], t.atoms.prod([group, per_group_out]))
        t.union(xd[cdim], t.atoms.prod([group, w_in]))
        out_c = wd[0]
    if isinstance(bias, fx.Node):
        t.union(t.dims(bias)[0], out_c)
    for atom in wd[2:]:
        t.block(atom, "kernel size")
    for atom in xd[cdim + 1 :]:
        t.block(atom, "spatial")
    out = (
        ([xd[0]] if batched else [])
        + [out_c]
        + [t.fresh(s, "spatial") for s in out_shape[cdim + 1 :]]
    )
    t.set_dims(node, out)


@register_rule("aten.linear.default")
def _linear(t: Tracer, node: fx.Node) -> None:
    x, w = node.args[0], node.args[1]
    bias = _arg(node, 2, "bias")
    xd, wd = t.dims(x), t.dims(w)
    t.union(xd[-1], wd[1])
    if isinstance(bias, fx.Node):
        t.union(t.dims(bias)[0], wd[0])
    t.set_dims(node, list(xd[:-1]) + [wd[0]])


def _matmul_dims(t: Tracer, node: fx.Node, a: fx.Node, b: fx.Node) -> list[int]:
    ad, bd = list(t.dims(a)), list(t.dims(b))
    a_vec, b_vec = len(ad) == 1, len(bd) == 1
    if a_vec:
        ad = [t.fresh(1)] + ad
    if b_vec:
        bd = bd + [t.fresh(1)]
    t.union(ad[-1], bd[-2])
    out_shape = t.shape(node)
    nbatch = len(out_shape) - (0 if a_vec else 1) - (0 if b_vec else 1)
    batch: list[int] = []
    for i in range(nbatch):
        cands = []
        for dims in (ad[:-2], bd[:-2]):
            j = len(dims) - nbatch + i
            if j >= 0:
                cands.append(dims[j])
        size = out_shape[i]
        chosen = None
        for c in cands:
            if t.same_size(t.size(c), size):
                if chosen is None:
                    chosen = c
                else:
                    t.union(chosen, c)
        batch.append(chosen if chosen is not None else t.fresh(size))
    return batch + ([] if a_vec else [ad[-2]]) + ([] if b_vec else [bd[-1]])


@register_rule("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(t: Tracer, node: fx.Node) -> None:
    t.set_dims(node, _matmul_dims(t, node, node.args[0], node.args[1]))


@register_rule("aten.addmm.default", "aten.baddbmm.default", "aten.addbmm.default")
def _addmm(t: Tracer, node: fx.Node) -> None:
    t.set_dims(node, _matmul_dims(t, node, node.args[1], node.args[2]))
    bias = node.args[0]
    out = t.dims(node)
    bd, bs = t.dims(bias), t.shape(bias)
    for i, (atom, size) in enumerate(zip(bd, bs)):
        j = len(out) - len(bd) + i
        if t.same_size(size, t.shape(node)[j]):
            t.union(atom, out[j])


@register_rule("aten.einsum.default")
def _einsum(t: Tracer, node: fx.Node) -> None:
    equation, operands = node.args[0].replace(" ", ""), node.args[1]
    if "." in equation or "->" not in equation:
        return t.block_node(node, f"einsum '{equation}' (ellipsis / implicit output)")
    lhs, rhs = equation.split("->")
    letters: dict[str, int] = {}
    for spec, op in zip(lhs.split(","), operands):
        for ch, atom, size in zip(spec, t.dims(op), t.shape(op)):
            if t.same_size(size, 1) and ch in letters and not t.same_size(t.size(letters[ch]), 1):
                continue  # broadcast
            if ch in letters:
                t.union(letters[ch], atom)
            else:
                letters[ch] = atom
    t.set_dims(node, [letters[ch] for ch in rhs])


@register_rule("aten.scaled_dot_product_attention.default", masked="attention")
def _sdpa(t: Tracer, node: fx.Node) -> None:
    q, k, v = node.args[0], node.args[1], node.args[2]
    qd, kd, vd = t.dims(q), t.dims(k), t.dims(v)
    t.union(qd[-1], kd[-1])  # contracted head dim
    t.union(kd[-2], vd[-2])  # key/value sequence
    # the softmax runs over the keys: a removed key (a learned register token) would still
    # weigh in the fused kernel's softmax of the reference, so keys are never pruned
    t.block(kd[-2], "attention keys (the softmax runs over them)")
    hq, hk = t.size(qd[-3]), t.size(kd[-3])
    t.union(kd[-3], vd[-3])
    if hq == hk:
        t.union(qd[-3], kd[-3])
    elif hk and hq % hk == 0:  # GQA: query head i reads kv head i // (hq / hk)
        t.union(qd[-3], t.atoms.prod([kd[-3], t.atoms.new(hq // hk)]))
    else:
        return t.block_node(node, "attention head counts")
    for i in range(len(qd) - 3):
        t.union(qd[i], kd[i]) if t.size(qd[i]) == t.size(kd[i]) else None
    mask = _arg(node, 3, "attn_mask")
    out = list(qd[:-1]) + [vd[-1]]
    if isinstance(mask, fx.Node):
        md, ms = t.dims(mask), t.shape(mask)
        full = list(qd[:-1]) + [kd[-2]]
        for i, (atom, size) in enumerate(zip(md, ms)):
            j = len(full) - len(md) + i
            if j >= 0 and not t.same_size(size, 1):
                t.union(atom, full[j])
    t.set_dims(node, out)


# --------------------------------------------------------------------------- norms
@register_rule(
    "aten.batch_norm.default",
    "aten.instance_norm.default",
    "aten._native_batch_norm_legit_no_training.default",
    masked="batch_norm",  # with batch statistics: weight standardisation reduces over fan-in
)
def _batch_norm(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    xd = t.dims(x)
    for p in node.args[1:5]:
        if isinstance(p, fx.Node):
            t.union(t.dims(p)[0], xd[1])
    if t.is_tuple(node):
        t.set_tuple_dims(node, [list(xd)] + [None] * (len(t.val(node)) - 1))
    else:
        t.set_dims(node, list(xd))
    if "instance_norm" in target_name(node):
        t.mark_reduction(node, list(range(2, len(xd))))


@register_rule("aten.layer_norm.default", "aten.rms_norm.default", masked="layer_norm")
def _layer_norm(t: Tracer, node: fx.Node) -> None:
    x, shape = node.args[0], node.args[1]
    xd = t.dims(x)
    n = len(shape)
    params = [_arg(node, 2, "weight")]
    if "layer_norm" in target_name(node):
        params.append(_arg(node, 3, "bias"))
    for p in params:
        if isinstance(p, fx.Node):
            for a, b in zip(t.dims(p), xd[-n:]):
                t.union(a, b)
    t.note(node, "literal_dims", {1: xd[-n:]})
    t.set_dims(node, list(xd))


@register_rule("aten._weight_norm.default", masked="reduce")
def _weight_norm(t: Tracer, node: fx.Node) -> None:
    """Weight normalisation w = g * v / ||v||, the norm over every dim of v but `dim` (all of
    them when dim is -1, as torch's `weight_norm(dim=None)` passes it). w has v's dims; g (size
    1 except on `dim`) is sliced with dim `dim`. The other dims of v pass through to w (a conv's
    input channels) but are reduced by the norm: like LayerNorm statistics, a pruned model
    normalises over its kept channels only, which the masked reference ("reduce") reproduces."""
    v, g = node.args[0], node.args[1]
    dim = int(_arg(node, 2, "dim", 0))
    vd, vs, gd, gs = t.dims(v), t.shape(v), t.dims(g), t.shape(g)
    d = None if dim == -1 else _norm_dim(dim, len(vs))  # aten reads -1 as "no dim", not the last
    for i, size in enumerate(gs):
        if t.same_size(size, 1):
            continue
        if i != d or len(gs) != len(vs) or not t.same_size(size, vs[d]):
            return t.block_node(node, f"weight norm g {gs} for v {vs}, dim {dim}")
        t.union(gd[i], vd[d])
    t.mark_reduction(node, [i for i in range(len(vd)) if i != d])
    t.set_dims(node, list(vd))


@register_rule("aten.group_norm.default", masked="group_norm")
def _group_norm(t: Tracer, node: fx.Node) -> None:
    x, groups = node.args[0], int(node.args[1])
    xd = t.dims(x)
    c = t.size(xd[1])
    group = t.atoms.new(groups)
    per = t.atoms.new(c // groups)
    t.union(xd[1], t.atoms.prod([group, per]))
    for p in (_arg(node, 2, "weight"), _arg(node, 3, "bias")):
        if isinstance(p, fx.Node):
            t.union(t.dims(p)[0], xd[1])
    t.note(node, "groups_atom", group)
    t.set_dims(node, list(xd))


# --------------------------------------------------------------------- reductions
@register_rule(
    "aten.mean.dim",
    "aten.sum.dim_IntList",
    "aten.amax.default",
    "aten.amin.default",
    "aten.var.correction",
    "aten.std.correction",
    "aten.var.dim",
    "aten.std.dim",
    "aten.logsumexp.default",
    "aten.linalg_vector_norm.default",
    "aten.norm.ScalarOpt_dim",
    "aten.mean.default",
    "aten.sum.default",
    "aten.any.dim",
    "aten.all.dim",
    masked="reduce",
)
def _reduce(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    xd = t.dims(x)
    ndim = len(xd)
    name = target_name(node)
    if name in ("aten.mean.default", "aten.sum.default"):
        dims = list(range(ndim))
        keepdim = False
    elif name.startswith("aten.linalg_vector_norm"):
        dims = _arg(node, 2, "dim")
        keepdim = bool(_arg(node, 3, "keepdim", False))
    elif name.startswith("aten.norm"):
        dims = _arg(node, 2, "dim")
        keepdim = bool(_arg(node, 3, "keepdim", False))
    elif name in ("aten.var.correction", "aten.std.correction"):
        dims = _arg(node, 1, "dim")
        keepdim = bool(node.kwargs.get("keepdim", False))
    else:
        dims = _arg(node, 1, "dim")
        keepdim = bool(_arg(node, 2, "keepdim", False))
    if dims is None or dims == []:
        dims = list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    dims = sorted(_norm_dim(d, ndim) for d in dims)
    t.mark_reduction(node, dims)
    out = []
    for i, atom in enumerate(xd):
        if i in dims:
            if keepdim:
                out.append(t.fresh(1))
        else:
            out.append(atom)
    t.set_dims(node, out)


@register_rule("aten.max.dim", "aten.min.dim", masked="reduce")
def _max_dim(t: Tracer, node: fx.Node) -> None:
    x, dim = node.args[0], node.args[1]
    keepdim = bool(_arg(node, 2, "keepdim", False))
    xd = t.dims(x)
    dim = _norm_dim(dim, len(xd))
    t.block(xd[dim], "arg-reduction returns indices")
    t.mark_reduction(node, [dim])
    out = [t.fresh(1) if i == dim else a for i, a in enumerate(xd) if keepdim or i != dim]
    t.set_tuple_dims(node, [out, list(out)])


# ------------------------------------------------------------------------ pooling
@register_rule(
    "aten.max_pool1d.default",
    "aten.max_pool2d.default",
    "aten.max_pool3d.default",
    "aten.avg_pool1d.default",
    "aten.avg_pool2d.default",
    "aten.avg_pool3d.default",
    "aten.adaptive_avg_pool1d.default",
    "aten.adaptive_avg_pool2d.default",
    "aten.adaptive_avg_pool3d.default",
    "aten.adaptive_max_pool1d.default",
    "aten.adaptive_max_pool2d.default",
    "aten.max_pool2d_with_indices.default",
    "aten.upsample_nearest2d.vec",
    "aten.upsample_bilinear2d.vec",
    "aten.upsample_nearest1d.vec",
    "aten.upsample_linear1d.vec",
    "aten.upsample_bicubic2d.vec",
    "aten.upsample_nearest3d.vec",
    "aten._upsample_bilinear2d_aa.vec",
    "aten.upsample_trilinear3d.vec",
)
def _pool(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    xd = t.dims(x)
    val = t.val(node)
    shape = list((val[0] if isinstance(val, (tuple, list)) else val).shape)
    nspatial = _spatial_count(target_name(node))
    lead = len(xd) - nspatial
    for atom in xd[lead:]:
        t.block(atom, "spatial")
    out = list(xd[:lead]) + [t.fresh(s, "spatial") for s in shape[lead:]]
    if isinstance(val, (tuple, list)):
        t.set_tuple_dims(node, [out, list(out)])
    else:
        t.set_dims(node, out)


def _spatial_count(name: str) -> int:
    m = re.search(r"(\d)d", name)
    return int(m.group(1)) if m else 2


@register_rule("aten.pixel_shuffle.default")
def _pixel_shuffle(t: Tracer, node: fx.Node) -> None:
    x, r = node.args[0], int(node.args[1])
    xd, shape = t.dims(x), t.shape(node)
    c = len(xd) - 3
    out_c = t.atoms.new(shape[c])
    ry, rx = t.fresh(r, "pixel shuffle"), t.fresh(r, "pixel shuffle")
    t.union(xd[c], t.atoms.prod([out_c, ry, rx]))
    t.set_dims(node, list(xd[:c]) + [out_c] + [t.fresh(s, "spatial") for s in shape[c + 1 :]])


@register_rule("aten.channel_shuffle.default", "aten.native_channel_shuffle.default")
def _channel_shuffle(t: Tracer, node: fx.Node) -> None:
    """channel_shuffle(x, g) is view(n, g, c/g, *).transpose(1, 2).reshape(n, c, *): the input
    channels are groups x per-group, the output per-group x groups. The groups factor is frozen
    (the op's `groups` literal must not change); removing a per-group index removes that channel
    from every group, and the shuffle stays the same at c'/g per group."""
    x, groups = node.args[0], int(node.args[1])
    xd, xs = t.dims(x), t.shape(x)
    if len(xs) < 3 or not isinstance(xs[1], int) or xs[1] % groups:
        return t.block_node(node, f"channel shuffle of {xs} in {groups} groups")
    group, per_group = t.fresh(groups, "channel shuffle groups"), t.atoms.new(xs[1] // groups)
    t.union(xd[1], t.atoms.prod([group, per_group]))
    t.set_dims(node, [xd[0], t.atoms.prod([per_group, group]), *xd[2:]])


@register_rule("aten.pixel_unshuffle.default")
def _pixel_unshuffle(t: Tracer, node: fx.Node) -> None:
    x, r = node.args[0], int(node.args[1])
    xd, shape = t.dims(x), t.shape(node)
    c = len(xd) - 3
    out_c = t.atoms.prod([xd[c], t.fresh(r, "pixel shuffle"), t.fresh(r, "pixel shuffle")])
    t.set_dims(node, list(xd[:c]) + [out_c] + [t.fresh(s, "spatial") for s in shape[c + 1 :]])


# ------------------------------------------------------------------- shape ops
@register_rule("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default")
def _reshape(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    t.set_dims(node, t.reshape_dims(t.dims(x), t.shape(x), t.shape(node)))
    t.note(node, "literal_shape", 1)


@register_rule("aten.reshape_as.default", "aten.view_as.default")
def _reshape_as(t: Tracer, node: fx.Node) -> None:
    """`x.reshape_as(other)`: a reshape of x whose shape follows `other` (no literal to update),
    so its output dims are other's, coupled with the dims of x they come from."""
    x, other = node.args[0], node.args[1]
    moved = t.reshape_dims(t.dims(x), t.shape(x), t.shape(node))
    target = t.dims(other)
    for a, b in zip(moved, target or []):
        t.union(a, b)
    t.set_dims(node, list(target) if target else moved)


@register_rule("aten.flatten.using_ints")
def _flatten(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    t.set_dims(node, t.reshape_dims(t.dims(x), t.shape(x), t.shape(node)))


@register_rule("aten.unflatten.int")
def _unflatten(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    t.set_dims(node, t.reshape_dims(t.dims(x), t.shape(x), t.shape(node)))
    t.note(node, "literal_unflatten", 2)


@register_rule("aten.permute.default")
def _permute(t: Tracer, node: fx.Node) -> None:
    xd = t.dims(node.args[0])
    t.set_dims(node, [xd[_norm_dim(d, len(xd))] for d in node.args[1]])


@register_rule("aten.transpose.int", "aten.swapaxes.default", "aten.swapdims.default")
def _transpose(t: Tracer, node: fx.Node) -> None:
    xd = list(t.dims(node.args[0]))
    a, b = (_norm_dim(int(d), len(xd)) for d in node.args[1:3])
    xd[a], xd[b] = xd[b], xd[a]
    t.set_dims(node, xd)


@register_rule("aten.t.default", "aten.numpy_T.default")
def _t(t: Tracer, node: fx.Node) -> None:
    t.set_dims(node, list(reversed(t.dims(node.args[0]))))


@register_rule("aten.unsqueeze.default")
def _unsqueeze(t: Tracer, node: fx.Node) -> None:
    xd = list(t.dims(node.args[0]))
    d = _norm_dim(int(node.args[1]), len(xd) + 1)
    t.set_dims(node, xd[:d] + [t.fresh(1)] + xd[d:])


@register_rule("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default")
def _squeeze(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    xd, xs = t.dims(x), t.shape(x)
    dims = node.args[1] if len(node.args) > 1 else list(range(len(xd)))
    dims = [dims] if isinstance(dims, int) else dims
    dims = {_norm_dim(d, len(xd)) for d in dims}
    t.set_dims(node, [a for i, (a, s) in enumerate(zip(xd, xs)) if not (i in dims and s == 1)])


@register_rule("aten.expand.default", "aten.expand_as.default", "aten.broadcast_to.default")
def _expand(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    xd, xs, out_shape = t.dims(x), t.shape(x), t.shape(node)
    lead = len(out_shape) - len(xd)
    out = [t.fresh(s) for s in out_shape[:lead]]
    for atom, size, osize in zip(xd, xs, out_shape[lead:]):
        out.append(atom if t.same_size(size, osize) else t.fresh(osize))
    t.note(node, "literal_shape", 1)
    t.set_dims(node, out)


@register_rule("aten.repeat.default")
def _repeat(t: Tracer, node: fx.Node) -> None:
    """`x.repeat(*reps)` tiles x: along a dim of size n repeated r times, output index k * n + j
    is input index j, that is the product (r copies) x (x's dim). The copies are frozen; the
    input's channels stay the output's, so whatever the tiled tensor is later joined with (BLOOM
    adds `alibi.repeat(batch, 1, 1)`, [batch x heads, 1, S], to the (batch x heads) scores) is
    coupled with them. That holds for a symbolic count (the batch) too: a fresh output atom there
    would let the join lose the input's channels and their blocks (slopes made from literals)."""
    x, reps = node.args[0], node.args[1]
    xd, xs, out_shape = t.dims(x), t.shape(x), t.shape(node)
    lead = len(reps) - len(xd)
    out = [t.fresh(s) for s in out_shape[:lead]]
    for atom, r, size, osize in zip(xd, reps[lead:], xs, out_shape[lead:]):
        if isinstance(r, int):
            out.append(t.atoms.prod([t.fresh(r, "repeat"), atom]) if r != 1 else atom)
        elif isinstance(size, int) and size > 0 and isinstance(osize, int) and osize % size == 0:
            # a symbolic count read at the example batch: (osize / size) copies of the dim
            copies = t.fresh(osize // size, "repeated a symbolic number of times")
            out.append(t.atoms.prod([copies, atom]))
        else:  # sizes that do not say how the copies tile: keep both sides whole
            t.block(atom, "repeated a symbolic number of times")
            out.append(t.fresh(osize, "repeated a symbolic number of times"))
    t.set_dims(node, out)


@register_rule("aten.select.int")
def _select(t: Tracer, node: fx.Node) -> None:
    x, dim, index = node.args[0], int(node.args[1]), node.args[2]
    xd, xs = t.dims(x), t.shape(x)
    dim = _norm_dim(dim, len(xd))
    size = xs[dim]
    if isinstance(size, int) and isinstance(index, int):
        index = index + size if index < 0 else index
        if size > 1:
            pieces = t.split_cat(xd[dim], [index, 1, size - index - 1])
            t.block(pieces[1], "selected index")
    t.set_dims(node, [a for i, a in enumerate(xd) if i != dim])


@register_rule("aten.slice.Tensor")
def _slice(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    dim = int(_arg(node, 1, "dim", 0))
    start, end, step = _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1)
    xd, xs = list(t.dims(x)), t.shape(x)
    dim = _norm_dim(dim, len(xd))
    size = xs[dim]
    if not isinstance(size, int):
        return t.set_dims(node, xd)
    if not all(isinstance(v, int) or v is None for v in (start, end, step)):
        t.block(xd[dim], "data-dependent slice")
        xd[dim] = t.fresh(t.shape(node)[dim], "slice")
        return t.set_dims(node, xd)
    start, end, _ = slice(start, end).indices(size)
    if step != 1:
        t.block(xd[dim], "strided slice")
        xd[dim] = t.fresh(t.shape(node)[dim], "slice")
    elif start == 0 and end >= size:
        pass
    else:
        end = max(end, start)
        first, mid, _ = t.split_cat(xd[dim], [start, end - start, size - end])
        xd[dim] = mid
        if start == 0 or end >= size:  # x[:, :k] or x[:, k:]: k is a piece's size
            t.note(node, "literal_slice", mid if start == 0 else first)
    t.set_dims(node, xd)


@register_rule(
    "aten.split.Tensor",
    "aten.split_with_sizes.default",
    "aten.chunk.default",
    "aten.unbind.int",
    "aten.tensor_split.sections",
)
def _split(t: Tracer, node: fx.Node) -> None:
    x = node.args[0]
    xd, xs = t.dims(x), t.shape(x)
    name = target_name(node)
    outs = [list(v.shape) for v in t.val(node)]
    if name.startswith("aten.unbind"):
        dim = _norm_dim(int(_arg(node, 1, "dim", 0)), len(xd))
        pieces = t.split_cat(xd[dim], [1] * xs[dim]) if xs[dim] > 1 else [xd[dim]]
        t.set_tuple_dims(node, [[a for i, a in enumerate(xd) if i != dim] for _ in outs])
        for p in pieces:
            t.block(p, "unbind")
        return
    dim = _norm_dim(int(_arg(node, 2, "dim", 0)), len(xd))
    sizes = [o[dim] for o in outs]
    pieces = t.split_cat(xd[dim], sizes) if len(sizes) > 1 else [xd[dim]]
    t.set_tuple_dims(node, [xd[:dim] + [p] + xd[dim + 1 :] for p in pieces])
    t.note(node, "literal_split", dim)


@register_rule("aten.glu.default")
def _glu(t: Tracer, node: fx.Node) -> None:
    """glu(x, dim) = a * sigmoid(b) with a, b = x.chunk(2, dim): x's dim is the concatenation of
    two halves that are the same space (output channel i reads input channels i and i + C/2),
    so removing an output channel removes both of its inputs."""
    x = node.args[0]
    xd, xs = list(t.dims(x)), t.shape(x)
    dim = _norm_dim(int(_arg(node, 1, "dim", -1)), len(xd))
    if not isinstance(xs[dim], int) or xs[dim] % 2:
        return t.block_node(node, f"glu over a dim of size {xs[dim]}")
    a, b = t.split_cat(xd[dim], [xs[dim] // 2] * 2)
    t.union(a, b)
    xd[dim] = a
    t.set_dims(node, xd)


@register_rule("aten.cat.default", "aten.concat.default", "aten.concatenate.default")
def _cat(t: Tracer, node: fx.Node) -> None:
    tensors = [x for x in node.args[0] if t.shape(x) is not None]
    dim = int(_arg(node, 1, "dim", 0))
    out_shape = t.shape(node)
    dim = _norm_dim(dim, len(out_shape))
    real = [x for x in tensors if len(t.shape(x)) == len(out_shape)]  # skip legacy empty (0,)
    pieces = [t.dims(x)[dim] for x in real]
    out = list(t.dims(real[0]))
    for x in real[1:]:
        for i, atom in enumerate(t.dims(x)):
            if i != dim:
                t.union(out[i], atom)
    out[dim] = t.atoms.cat(pieces)
    t.set_dims(node, out)


@register_rule("aten.stack.default")
def _stack(t: Tracer, node: fx.Node) -> None:
    tensors = list(node.args[0])
    out_shape = t.shape(node)
    dim = _norm_dim(int(_arg(node, 1, "dim", 0)), len(out_shape))
    base = list(t.dims(tensors[0]))
    for x in tensors[1:]:
        for a, b in zip(base, t.dims(x)):
            t.union(a, b)
    new = t.fresh(len(tensors), "stack")
    t.set_dims(node, base[:dim] + [new] + base[dim:])


@register_rule("aten.repeat_interleave.self_int")
def _repeat_interleave(t: Tracer, node: fx.Node) -> None:
    x, reps = node.args[0], node.args[1]
    dim = _arg(node, 2, "dim")
    xd = list(t.dims(x))
    if dim is None or not isinstance(reps, int):
        return t.block_node(node, "repeat_interleave")
    dim = _norm_dim(int(dim), len(xd))
    xd[dim] = t.atoms.prod([xd[dim], t.fresh(reps, "repeat")])
    t.set_dims(node, xd)


@register_rule("aten.index.Tensor")
def _index(t: Tracer, node: fx.Node) -> None:
    """Advanced indexing x[..., idx, ...]: indexed dims are frozen, the rest pass through."""
    x, indices = node.args[0], list(node.args[1])
    xd = list(t.dims(x))
    used = [i for i, ix in enumerate(indices) if ix is not None]
    if not used or used != list(range(used[0], used[-1] + 1)):
        return t.block_node(node, "non-contiguous advanced indexing")
    for i in used:
        t.block(xd[i], "indexed by data")
    out_shape = t.shape(node)
    n_idx = len(out_shape) - (len(xd) - len(used))
    mid = [t.fresh(s, "index result") for s in out_shape[used[0] : used[0] + n_idx]]
    t.set_dims(node, xd[: used[0]] + mid + xd[used[-1] + 1 :])


@register_rule("aten.embedding.default")
def _embedding(t: Tracer, node: fx.Node) -> None:
    w, idx = node.args[0], node.args[1]
    wd = t.dims(w)
    t.block(wd[0], "embedding rows are indexed by data")
    t.set_dims(node, list(t.dims(idx)) + [wd[1]])


@register_rule(
    "aten.constant_pad_nd.default",
    "aten.pad.default",
    "aten.reflection_pad2d.default",
    "aten.replication_pad2d.default",
    "aten.reflection_pad1d.default",
)
def _pad(t: Tracer, node: fx.Node) -> None:
    x, pad = node.args[0], node.args[1]
    xd, out_shape = list(t.dims(x)), t.shape(node)
    npad = len(pad) // 2
    for i in range(len(xd) - npad, len(xd)):
        if any(pad[2 * (len(xd) - 1 - i) : 2 * (len(xd) - 1 - i) + 2]):
            t.block(xd[i], "padding")
            xd[i] = t.fresh(out_shape[i], "padding")
    t.set_dims(node, xd)


@register_rule("aten.roll.default")
def _roll(t: Tracer, node: fx.Node) -> None:
    x, dims = node.args[0], _arg(node, 2, "dims", [])
    xd = list(t.dims(x))
    dims = [dims] if isinstance(dims, int) else list(dims) or list(range(len(xd)))
    for d in dims:
        t.block(xd[_norm_dim(d, len(xd))], "roll")
    t.set_dims(node, xd)


@register_rule("aten.flip.default")
def _flip(t: Tracer, node: fx.Node) -> None:
    x, dims = node.args[0], node.args[1]
    xd = list(t.dims(x))
    for d in dims:
        t.block(xd[_norm_dim(d, len(xd))], "flip")
    t.set_dims(node, xd)


# ------------------------------------------------------------ creation and no-ops
@register_rule(
    "aten.zeros.default",
    "aten.ones.default",
    "aten.empty.memory_format",
    "aten.full.default",
    "aten.arange.default",
    "aten.arange.start",
    "aten.arange.start_step",
    "aten.randn.default",
    "aten.rand.default",
    "aten.new_zeros.default",
    "aten.new_ones.default",
    "aten.new_empty.default",
    "aten.new_full.default",
    "aten.scalar_tensor.default",
    "aten.tensor.default",
    "aten.eye.default",
    "aten.linspace.default",
)
def _create(t: Tracer, node: fx.Node) -> None:
    shape = t.shape(node)
    t.set_dims(node, [t.fresh(s, "created from literals") for s in shape])


def no_op(t: Tracer, node: fx.Node) -> None:
    """Ops with no tensor output (asserts, size queries)."""


for _name in (
    "aten._assert_tensor_metadata.default",
    "aten._assert_scalar.default",
    "aten.sym_size.int",
    "aten.sym_numel.default",
    "aten.sym_stride.int",
    "aten._assert_async.msg",
    "aten.sym_constrain_range_for_size.default",
    "aten._functional_assert_async.msg",
):
    register_rule(_name)(no_op)


@register_rule("getitem")
def _getitem(t: Tracer, node: fx.Node) -> None:
    src, index = node.args
    dims = t.tuple_dims(src)
    if dims is None or not isinstance(index, int) or dims[index] is None:
        if t.shape(node) is not None:
            t.set_dims(node, [t.fresh(s, "unknown tuple element") for s in t.shape(node)])
            t.block_tensor(node, "unknown tuple element")
        return
    t.set_dims(node, list(dims[index]))
