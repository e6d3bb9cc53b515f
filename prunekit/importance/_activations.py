"""Where a group's channels live in the exported graph, and their statistics on calibration data.

Two kinds of places, found from the graph alone (no op-specific code, only the channel-space
atoms of every tensor dim):

- the **activation site** of a group: the output of the first nonlinearity that follows the
  group's producer through a chain of channel-wise ops (bias, norm, scale, dropout), for instance
  ``conv -> batch_norm -> relu``; without such a nonlinearity, the producer's output. The producer
  is the first node (graph order) that creates the channels from a weight: a parameter-derived
  input and the output carry them, no data input does (conv, linear, embedding, einsum with a
  bare weight...). Groups without a producer read the first data tensor that carries them.
- the **consumers** of a group: nodes that contract its channels away against a weight (the
  group's channels are on a data input and on a parameter-derived input, not on the output):
  the next conv/linear/einsum. Wanda reads their input features and weight columns.

Statistics are per index of one dim of one node, collected by running the exported graph with an
`fx.Interpreter` on the calibration inputs (the model's current weights, eval mode), and mapped to
the group's channels with the atom index maps (products such as heads x head_dim and
concatenations included) afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx
from torch.utils._pytree import tree_flatten

from prunekit.graph.record import batch_multiple
from prunekit.importance._data import device_of, pooled_graph_inputs, to_device

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph
    from prunekit.graph.dependency import Tracer

# ATen base names of nonlinearities (in-place variants included by stripping the trailing "_").
ACTIVATIONS = frozenset(
    """relu relu6 leaky_relu prelu rrelu gelu silu sigmoid tanh hardswish hardsigmoid hardtanh
    elu selu celu mish softplus softsign logsigmoid clamp_min glu""".split()
)
_MAX_CHAIN = 8


def _base(node: fx.Node) -> str:
    from prunekit.graph.rules import target_name

    name = target_name(node)
    parts = name.split(".")
    base = parts[1] if len(parts) >= 3 and parts[0] == "aten" else parts[-1]
    return base.rstrip("_")


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []

    def visit(v: Any) -> None:
        if isinstance(v, fx.Node):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)

    visit(node.args)
    visit(node.kwargs)
    return out


@dataclass
class Site:
    """Channel `dim` of node `node`'s output; `index[i]` is the group channel of index i."""

    node: str
    dim: int
    index: torch.Tensor
    kind: str  # "activation" | "producer" | "first"
    sample_dim: int | None


@dataclass
class Consumer:
    """A node contracting the group's channels: data input `x` (dim `x_dim`) against the
    parameter-derived input `weight` (dim `w_dim`)."""

    node: str
    x: str
    x_dim: int
    x_index: torch.Tensor
    weight: str
    w_dim: int
    w_index: torch.Tensor
    paired: bool  # same channel space: index i of the weight dim multiplies index i of x


@dataclass
class Analysis:
    sites: dict[str, Site | None] = field(default_factory=dict)
    consumers: dict[str, list[Consumer]] = field(default_factory=dict)


class _Leaves:
    """Memoised leaf sets of atoms (does dim atom `a` carry channels of leaf `L`?)."""

    def __init__(self, graph: DependencyGraph) -> None:
        self.atoms = graph.tracer.atoms
        self._memo: dict[int, frozenset[int]] = {}

    def of(self, atom: int) -> frozenset[int]:
        root = self.atoms.find(atom)
        if root not in self._memo:
            self._memo[root] = frozenset(self.atoms.leaves(root))
        return self._memo[root]

    def dims_with(self, dims: list[int] | None, leaf: int) -> list[int]:
        return [d for d, a in enumerate(dims or []) if leaf in self.of(a)]


def _static_nodes(graph: DependencyGraph) -> tuple[set[str], set[str]]:
    """Nodes computed from parameters/buffers/constants only, and those reaching a parameter."""
    targets = graph.tracer.placeholder_target
    static: set[str] = set()
    param: set[str] = set()
    for node in graph.exported.graph.nodes:
        if node.op == "placeholder":
            if node.name in targets:
                static.add(node.name)
                if targets[node.name][1] == "parameter":
                    param.add(node.name)
        elif node.op == "call_function":
            args = _node_args(node)
            if args and all(a.name in static for a in args):
                static.add(node.name)
                if any(a.name in param for a in args):
                    param.add(node.name)
    return static, param


def _symbolic_dims(node: fx.Node, batch_tag: int | None) -> list[int]:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return []
    return [i for i, s in enumerate(val.shape) if _is_symbolic(s, batch_tag)]


def _is_symbolic(size: Any, batch_tag: int | None) -> bool:
    return isinstance(size, torch.SymInt) or batch_multiple(size, batch_tag) is not None


def _shape(node: fx.Node) -> tuple | None:
    val = node.meta.get("val")
    return tuple(str(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def analyse(graph: DependencyGraph) -> Analysis:
    """Activation site and consumers of every group (cached on the graph)."""
    if "activation_analysis" in graph.cache:
        return graph.cache["activation_analysis"]
    tracer = graph.tracer
    leaves = _Leaves(graph)
    static, param = _static_nodes(graph)
    nodes = [
        n
        for n in graph.exported.graph.nodes
        if n.op == "call_function" and tracer.node_dims.get(n.name) and n.name not in static
    ]
    result = Analysis()
    for group in graph.groups:
        leaf = tracer.atoms.find(group.atom)
        producer = first = None
        consumers: list[Consumer] = []
        for n in nodes:
            out_dims = leaves.dims_with(tracer.node_dims[n.name], leaf)
            args = [a for a in _node_args(n) if tracer.node_dims.get(a.name)]
            data = [(a, leaves.dims_with(tracer.node_dims[a.name], leaf)) for a in args]
            weights = [(a, d) for a, d in data if a.name in param and d]
            data = [(a, d) for a, d in data if a.name not in static and d]
            if out_dims and first is None:
                first = n
            if out_dims and weights and not data and producer is None:
                producer = n
            if weights and data and not out_dims:
                (x, x_dims), (w, w_dims) = data[0], weights[0]
                xa, wa = tracer.node_dims[x.name][x_dims[0]], tracer.node_dims[w.name][w_dims[0]]
                consumers.append(
                    Consumer(
                        node=n.name,
                        x=x.name,
                        x_dim=x_dims[0],
                        x_index=tracer.atoms.index_map(xa, leaf),
                        weight=w.name,
                        w_dim=w_dims[0],
                        w_index=tracer.atoms.index_map(wa, leaf),
                        paired=tracer.atoms.find(xa) == tracer.atoms.find(wa),
                    )
                )
        result.consumers[group.key] = consumers
        site_node, kind = None, None
        if producer is not None:
            site_node, kind = _follow_to_activation(producer, leaf, leaves, tracer, static)
        elif first is not None:
            site_node, kind = first, "first"
        result.sites[group.key] = (
            _site(site_node, kind, leaf, leaves, tracer) if site_node else None
        )
    graph.cache["activation_analysis"] = result
    return result


def _follow_to_activation(
    producer: fx.Node, leaf: int, leaves: _Leaves, tracer: Tracer, static: set[str]
) -> tuple[fx.Node, str]:
    """Walk single-user, same-shape, channel-wise ops from the producer to a nonlinearity."""
    cur = producer
    for _ in range(_MAX_CHAIN):
        if _base(cur) in ACTIVATIONS:
            return cur, "activation"
        users = list(cur.users)
        if len(users) != 1:
            break
        (u,) = users
        if u.op != "call_function" or not tracer.node_dims.get(u.name):
            break
        data = [a for a in _node_args(u) if a.name not in static and tracer.node_dims.get(a.name)]
        if data != [cur] or _shape(u) != _shape(cur):
            break
        if not leaves.dims_with(tracer.node_dims[u.name], leaf):
            break
        cur = u
    if _base(cur) in ACTIVATIONS:
        return cur, "activation"
    return producer, "producer"


def _site(node: fx.Node, kind: str, leaf: int, leaves: _Leaves, tracer: Tracer) -> Site:
    dims = tracer.node_dims[node.name]
    dim = leaves.dims_with(dims, leaf)[0]
    symbolic = [d for d in _symbolic_dims(node, tracer.batch_tag) if d != dim]
    if symbolic:
        sample = symbolic[0]
    else:
        sample = 0 if dim != 0 and len(dims) > 1 else None
    return Site(node.name, dim, tracer.atoms.index_map(dims[dim], leaf), kind, sample)


# ------------------------------------------------------------------------------ statistics
class IndexStats:
    """Running statistics of one dim of one node, per index of that dim (float64, CPU)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = torch.zeros(size, dtype=torch.float64)  # elements seen per index
        self.sum_abs = torch.zeros(size, dtype=torch.float64)
        self.sum_sq = torch.zeros(size, dtype=torch.float64)
        self.nonpos = torch.zeros(size, dtype=torch.float64)  # elements <= 0
        self.pooled: list[torch.Tensor] = []  # per batch: [samples, size], mean over other dims

    def update(self, t: torch.Tensor, dim: int, sample_dim: int | None, pooled: bool) -> None:
        t = t.detach()
        if not t.is_floating_point():
            t = t.float()
        x = t.movedim(dim, -1).reshape(-1, self.size)
        self.count += x.shape[0]
        self.sum_abs += x.abs().sum(0).double().cpu()
        self.sum_sq += (x.double() ** 2).sum(0).cpu()
        self.nonpos += (x <= 0).sum(0).double().cpu()
        if pooled:
            if sample_dim is None:
                per_sample = x.double().mean(0, keepdim=True)
            else:
                moved = t.movedim((sample_dim, dim), (0, -1))
                per_sample = moved.reshape(moved.shape[0], -1, self.size).double().mean(1)
            self.pooled.append(per_sample.cpu())


def graph_inputs(graph: DependencyGraph, inputs: list[Any]) -> list[list[Any]]:
    """Flat inputs of the exported graph module for each calibration chunk.

    Parameters and buffers are the model's current values (by name); user inputs come from the
    calibration batches, re-batched as the exported graph requires (see `pooled_graph_inputs`).
    """
    ep = graph.exported
    example = ep._graph_module_flat_inputs(graph.export_args, graph.export_kwargs)
    ex_leaves, ex_spec = tree_flatten((tuple(graph.export_args), dict(graph.export_kwargs)))
    n_state = len(example) - len(ex_leaves)
    tensors = dict(graph.model.named_parameters(remove_duplicate=False))
    tensors.update(graph.model.named_buffers(remove_duplicate=False))
    specs = [s for s in ep.graph_signature.input_specs if s.kind.name != "USER_INPUT"]
    state = list(example[:n_state])
    for i, spec in enumerate(specs[:n_state]):
        if spec.kind.name in ("PARAMETER", "BUFFER") and spec.target in tensors:
            state[i] = tensors[spec.target].detach()
    placeholders = [
        n
        for n in ep.graph.nodes
        if n.op == "placeholder" and n.name not in graph.tracer.placeholder_target
    ]
    static_batch = None
    for n in placeholders:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim():
            symbolic = _is_symbolic(val.shape[0], getattr(ep, "batch_tag", None))
            static_batch = None if symbolic else int(val.shape[0])
            break
    device = device_of(graph.model)
    out = []
    traced = graph.export_args
    one_dict = len(traced) == 1 and isinstance(traced[0], dict) and not graph.export_kwargs
    for args, kwargs in pooled_graph_inputs(inputs, static_batch):
        if one_dict and not args and set(kwargs) == set(traced[0]):  # the model takes a dict
            args, kwargs = (kwargs,), {}
        unknown = set(kwargs) - set(graph.export_kwargs)
        if unknown:
            raise ValueError(
                f"calibration inputs pass keyword inputs {sorted(unknown)} that the traced model "
                "was not given; trace with example_kwargs holding the same keys"
            )
        merged = {k: kwargs.get(k, v) for k, v in graph.export_kwargs.items()}
        leaves, spec = tree_flatten((tuple(args), merged))
        if spec != ex_spec:
            raise ValueError(
                "calibration inputs do not have the structure of the example inputs the model "
                f"was traced with ({len(leaves)} input leaves vs {len(ex_leaves)})"
            )
        out.append(state + list(to_device(leaves, device)))
    return out


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, watch: dict[str, list]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.watch = watch

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        for fn in self.watch.get(n.name, ()):
            fn(out)
        return out


def collect(
    graph: DependencyGraph,
    inputs: list[Any],
    requests: dict[tuple[str, int], tuple[int | None, bool]],
    weights: set[str] = frozenset(),
) -> tuple[dict[tuple[str, int], IndexStats], dict[str, torch.Tensor]]:
    """Run the calibration inputs through the exported graph.

    `requests[(node, dim)] = (sample_dim, pooled)` asks for `IndexStats` of that node's `dim`
    (per-sample pooled values too when `pooled`); `weights` names parameter-derived nodes whose
    value is returned as is.
    """
    nodes = {n.name: n for n in graph.exported.graph.nodes}
    stats: dict[tuple[str, int], IndexStats] = {}
    values: dict[str, torch.Tensor] = {}
    watch: dict[str, list] = {}
    for (name, dim), (sample_dim, pooled) in requests.items():
        size = int(nodes[name].meta["val"].shape[dim])
        s = stats[(name, dim)] = IndexStats(size)
        watch.setdefault(name, []).append(
            lambda t, s=s, dim=dim, sd=sample_dim, p=pooled: s.update(t, dim, sd, p)
        )
    for name in weights:
        watch.setdefault(name, []).append(lambda t, name=name: values.__setitem__(name, t.detach()))
    with torch.no_grad():
        for flat in graph_inputs(graph, inputs):
            _Recorder(graph.exported.graph_module, watch).run(*flat, enable_io_processing=False)
    return stats, values


def scatter(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum `values[..., i]` into channel `index[i]` (indices mapped to -1 are dropped)."""
    valid = index >= 0
    out = torch.zeros(*values.shape[:-1], size, dtype=torch.float64)
    return out.index_add_(-1, index[valid], values[..., valid].double())


def calibration_inputs(batches: list[Any], name: str) -> list[Any]:
    """The inputs of each calibration batch (targets are not needed)."""
    from prunekit.importance._data import split_batch

    return [split_batch(b, name, need_targets=False)[0] for b in batches]
