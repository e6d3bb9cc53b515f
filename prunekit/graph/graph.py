"""`pk.trace`: the dependency graph of coupled channels of a model."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.utils import _pytree as pytree

from prunekit._checks import check_model
from prunekit.graph.capture import as_input_tuple
from prunekit.graph.capture import capture as capture_graph
from prunekit.graph.dependency import BlockedOp, Group, Tracer, collect_groups

# reasons for spaces that are never channels, or never pruned by design
NEVER_CHANNELS = frozenset({"kernel size", "spatial", "padding", "io"})


@dataclass
class DependencyGraph:
    """Groups of coupled channels of a model, with what blocks pruning and why.

    Built by `prunekit.trace`. `groups` are the prunable units; `blocked_ops` lists every op
    without a rule (each freezes the channel spaces it touches).
    """

    model: nn.Module
    exported: ExportedProgram
    tracer: Tracer
    groups: list[Group]
    leaf_flags: dict[int, set[str]]
    param_shapes: dict[str, tuple[int, ...]]
    trace_seconds: float = 0.0
    input_specs: list[dict[str, Any]] = field(default_factory=list)
    export_args: tuple = ()
    export_kwargs: dict[str, Any] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # per-graph memo (scores...)

    @property
    def blocked_ops(self) -> list[BlockedOp]:
        return self.tracer.blocked_ops

    def group(self, key: str) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)

    def blocked_spaces(self) -> Counter:
        """How many parameter channel spaces are frozen, by reason."""
        reasons: Counter = Counter()
        for flags in self.leaf_flags.values():
            for f in flags:
                if f.startswith("blocked:"):
                    reasons[f.removeprefix("blocked:")] += 1
        return reasons

    def kept_whole(self) -> dict[str, int]:
        """`blocked_spaces` that could have been channels: without the dims that never are
        (kernel, spatial) and the model's inputs and outputs, which are never pruned."""
        return {r: n for r, n in self.blocked_spaces().most_common() if r not in NEVER_CHANNELS}

    def total_params(self) -> int:
        """The model's parameters (buffers such as BatchNorm statistics are not counted)."""
        return sum(p.numel() for p in self.model.parameters())

    def prunable_params(self) -> int:
        """Parameters that belong to at least one prunable group."""
        names = {m.name for g in self.groups for m in g.members if m.kind == "parameter"}
        return sum(math.prod(self.param_shapes[n]) for n in names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [
                {
                    "key": g.key,
                    "size": g.size,
                    "modules": g.modules,
                    "members": [f"{m.name}:{m.dim}" for m in g.members],
                    "params_per_channel": g.param_count(self.param_shapes),
                }
                for g in self.groups
            ],
            "blocked_ops": [vars(b) for b in self.blocked_ops],
            "inputs": self.input_specs,
            "total_params": self.total_params(),
            "prunable_params": self.prunable_params(),
            "trace_seconds": self.trace_seconds,
        }

    def summary(self, max_groups: int = 40) -> str:
        """A readable table of groups, model I/O and blocking ops."""
        lines = [
            f"{len(self.groups)} prunable groups; "
            f"{self.prunable_params():,} of {self.total_params():,}"
            " parameters are in a prunable group",
            "inputs: "
            + ", ".join(_spec_text(s) for s in self.input_specs)
            + "  (model inputs and outputs are never pruned)",
            "",
            f"{'group':<44} {'size':>6} {'params/ch':>10}  layers",
        ]
        for g in self.groups[:max_groups]:
            mods = ", ".join(g.modules[:4]) + (
                f", +{len(g.modules) - 4}" if len(g.modules) > 4 else ""
            )
            lines.append(f"{g.key:<44} {g.size:>6} {g.param_count(self.param_shapes):>10}  {mods}")
        if len(self.groups) > max_groups:
            lines.append(f"... {len(self.groups) - max_groups} more groups")
        if self.blocked_ops:
            lines += ["", "ops that block pruning (no rule; the spaces they touch are kept):"]
            for b in self.blocked_ops:
                where = f" in {b.module}" if b.module else ""
                lines.append(f"  {b.op} ({b.node}{where}): {b.reason}")
        if self.kept_whole():
            lines += ["", "parameter spaces kept whole by an op's rule (why: how many):"]
            lines += [f"  {why}: {n}" for why, n in self.kept_whole().items()]
        return "\n".join(lines)


def input_specs(args: tuple) -> list[dict[str, Any]]:
    """JSON description of the inputs: a tensor's shape and dtype, a scalar's value, and the
    tensors of a container (a dict of inputs)."""
    return [_spec(a) for a in args]


def _spec(a: Any) -> dict[str, Any]:
    if isinstance(a, torch.Tensor):
        return {"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch.")}
    if a is None or isinstance(a, bool | int | float | str):
        return {"value": a}
    leaves, tree = pytree.tree_flatten(a)
    spec: dict[str, Any] = {"type": type(a).__name__, "leaves": [_spec(x) for x in leaves]}
    try:  # the container's structure, so that it can be rebuilt (dict keys...)
        spec["tree"] = pytree.treespec_dumps(tree)
    except Exception:  # noqa: BLE001 - a container pytree cannot serialise: shapes only
        pass
    return spec


def _spec_text(spec: dict[str, Any]) -> str:
    if "shape" in spec:
        return f"{spec['shape']} {spec['dtype']}"
    if "leaves" in spec:
        return f"{spec['type']}({', '.join(_spec_text(t) for t in spec['leaves'])})"
    return repr(spec.get("value"))


def inputs_from_specs(specs: list[dict[str, Any]]) -> tuple:
    """Inputs (zeros) shaped as `input_specs` describes them; ValueError where they cannot be
    rebuilt."""
    return tuple(_from_spec(s) for s in specs)


def _from_spec(spec: dict[str, Any]) -> Any:
    if "shape" in spec:
        return torch.zeros(spec["shape"], dtype=getattr(torch, spec.get("dtype", "float32")))
    if "leaves" in spec:
        if "tree" not in spec:
            raise ValueError(
                f"an input is a {spec['type']} whose structure was not recorded; "
                "pass example_inputs="
            )
        leaves = [_from_spec(x) for x in spec["leaves"]]
        return pytree.tree_unflatten(leaves, pytree.treespec_loads(spec["tree"]))
    return spec.get("value")


def trace(
    model: nn.Module,
    example_inputs: Any,
    example_kwargs: dict | None = None,
    *,
    capture: str = "auto",
) -> DependencyGraph:
    """Trace `model` and build its dependency graph of coupled channels.

    `capture` picks how the ATen graph is taken: "auto" (record on meta tensors, falling back to
    `torch.export` when recording refuses the model), "record" or "export".

    >>> import torch, torchvision, prunekit as pk
    >>> g = pk.trace(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224))
    >>> print(g.summary())  # doctest: +SKIP
    """
    check_model(model, "trace")
    args = as_input_tuple(example_inputs)
    start = time.perf_counter()
    ep, export_args, export_kwargs = capture_graph(model, args, example_kwargs, capture)
    tracer = Tracer(ep)
    tracer.run(model)
    groups, flags = collect_groups(tracer)
    shapes = {
        name: tuple(t.shape)
        for name, t in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    }
    for c_name, c in ep.constants.items():
        if isinstance(c, torch.Tensor):
            shapes[c_name] = tuple(c.shape)
    return DependencyGraph(
        model=model,
        exported=ep,
        tracer=tracer,
        groups=groups,
        leaf_flags=flags,
        param_shapes=shapes,
        trace_seconds=time.perf_counter() - start,
        input_specs=input_specs(args),
        export_args=export_args,
        export_kwargs=export_kwargs,
    )
