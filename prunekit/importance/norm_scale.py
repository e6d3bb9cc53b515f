"""`bn_scale`: network slimming (Liu et al. 2017), the |γ| of the normalisation scales in a group."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prunekit.importance.base import Importance, group_reduce
from prunekit.importance.registry import register

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

# ATen norm ops of the exported graph, and the position of their scale (γ) argument.
_SCALE_ARG = {
    "aten.batch_norm.default": 1,
    "aten.instance_norm.default": 1,
    "aten._native_batch_norm_legit_no_training.default": 1,
    "aten._native_batch_norm_legit.default": 1,
    "aten.native_batch_norm.default": 1,
    "aten.native_group_norm.default": 1,
    "aten.layer_norm.default": 2,
    "aten.native_layer_norm.default": 2,
    "aten.group_norm.default": 2,
    "aten.rms_norm.default": 2,
}


def norm_scales(graph: DependencyGraph) -> set[str]:
    """FQNs of the parameters that scale a normalisation's output channels (γ).

    Found in the graph (the scale argument of a norm op, whichever module calls it) and by module
    (the 1-d ``weight`` of a module whose class name contains "Norm": hand-written RMSNorms such
    as Llama's compute with elementwise ops).
    """
    key = "norm_scales"
    if key in graph.cache:
        return graph.cache[key]
    from prunekit.graph.rules import target_name

    targets = graph.tracer.placeholder_target
    found: set[str] = set()
    for node in graph.exported.graph.nodes:
        if node.op != "call_function":
            continue
        pos = _SCALE_ARG.get(target_name(node))
        if pos is None or len(node.args) <= pos:
            continue
        arg = node.args[pos]
        name = getattr(arg, "name", None)
        if name in targets and targets[name][1] == "parameter":
            found.add(targets[name][0])
    for mod_name, module in graph.model.named_modules(remove_duplicate=False):
        if "Norm" not in type(module).__name__:
            continue
        w = getattr(module, "weight", None)
        if isinstance(w, torch.nn.Parameter) and w.dim() == 1:
            found.add(f"{mod_name}.weight" if mod_name else "weight")
    graph.cache[key] = found
    return found


@register("bn_scale")
class BNScale(Importance):
    """Network slimming: ``Σ |γ|`` over the norm scales coupled to each channel.

    γ are the scales of BatchNorm, GroupNorm, LayerNorm, InstanceNorm and RMSNorm layers (see
    `norm_scales`); when several norms share a channel (a residual trunk) their |γ| add up. A group
    without any norm scale falls back to ``l1`` (``Σ |w|`` over all its parameter slices), so every
    group is scored; global scope divides each group by its mean, which makes the two comparable.
    Pair with L1 regularisation of γ during training for the method as published.
    """

    name = "bn_scale"

    def group_scores(self, graph, groups, data=None, **kw):
        scales = norm_scales(graph)
        out = {}
        for g in groups:
            has_scale = any(m.kind == "parameter" and m.name in scales for m in g.members)
            out[g.key] = group_reduce(
                graph,
                g,
                "abs^1",
                lambda w: w.float().abs(),
                only=(lambda n: n in scales) if has_scale else None,
            )
        return out
