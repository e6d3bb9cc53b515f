"""Build the dependency graph: walk the exported graph, apply op rules, collect prunable groups."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from prunekit.graph.atoms import AtomTable, StructureConflict
from prunekit.graph.record import RecordedProgram, batch_multiple
from prunekit.graph.rules import get_rule, target_name

DYNAMIC = -1  # size of atoms whose size is symbolic (the batch): never pruned


@dataclass
class Member:
    """One parameter/buffer dimension a group reaches."""

    name: str  # fully qualified name in the model
    dim: int
    kind: str  # "parameter" | "buffer" | "constant"


@dataclass
class Group:
    """A set of coupled channels that must be removed together (one leaf channel space)."""

    key: str
    atom: int
    size: int
    members: list[Member] = field(default_factory=list)

    @property
    def modules(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.members:
            seen.setdefault(m.name.rpartition(".")[0] or m.name, None)
        return list(seen)

    def param_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        """Parameters attached to one channel of this group (for summaries)."""
        total = 0
        for m in self.members:
            shape = shapes[m.name]
            total += math.prod(shape) // max(shape[m.dim], 1)
        return total


@dataclass
class BlockedOp:
    op: str
    node: str
    module: str
    reason: str


class Tracer:
    """Assigns channel-space atoms to every dimension of every tensor in an exported graph."""

    def __init__(self, ep: ExportedProgram | RecordedProgram) -> None:
        self.ep = ep
        self.batch_tag = getattr(ep, "batch_tag", None)  # recorded graphs: k x tag is batch-sized
        self.atoms = AtomTable()
        self.node_dims: dict[str, list[int] | None] = {}
        self.tuple_node_dims: dict[str, list[list[int] | None]] = {}
        self.notes: dict[str, dict[str, Any]] = {}
        self.reductions: dict[str, list[int]] = {}
        self.blocked_ops: list[BlockedOp] = []
        self.placeholder_target: dict[str, tuple[str, str]] = {}  # node -> (fqn, kind)
        self.tied: set[str] = set()  # names sharing one tensor with another graph input

    # ---------------------------------------------------------------- accessors
    def val(self, node: Any) -> Any:
        return node.meta.get("val") if isinstance(node, fx.Node) else None

    def shape(self, node: Any) -> list[Any] | None:
        v = self.val(node)
        if isinstance(v, torch.Tensor):
            return [self._size_value(s) for s in v.shape]
        return None

    def _size_value(self, s: Any) -> Any:
        """A size as an int at the example batch (export: a symbolic batch reads as its hint)."""
        try:
            size = int(s)
        except (TypeError, ValueError, RuntimeError):
            return str(s)
        k = batch_multiple(size, self.batch_tag)  # recorded graphs: k x tag is k x the batch
        return size if k is None else k * self.ep.example_batch

    def is_tuple(self, node: fx.Node) -> bool:
        return isinstance(self.val(node), (tuple, list))

    @staticmethod
    def same_size(a: Any, b: Any) -> bool:
        return a == b if isinstance(a, int) and isinstance(b, int) else str(a) == str(b)

    def size(self, atom: int) -> int:
        return self.atoms.size(atom)

    def dims(self, node: Any) -> list[int] | None:
        if not isinstance(node, fx.Node):
            return None
        return self.node_dims.get(node.name)

    def tuple_dims(self, node: fx.Node) -> list[list[int] | None] | None:
        return self.tuple_node_dims.get(node.name)

    def set_dims(self, node: fx.Node, dims: list[int]) -> None:
        self.node_dims[node.name] = list(dims)

    def set_tuple_dims(self, node: fx.Node, dims: list[list[int] | None]) -> None:
        self.tuple_node_dims[node.name] = dims

    def note(self, node: fx.Node, key: str, value: Any) -> None:
        self.notes.setdefault(node.name, {})[key] = value

    def mark_reduction(self, node: fx.Node, dims: list[int]) -> None:
        self.reductions[node.name] = dims

    # ------------------------------------------------------------------ atoms
    def fresh(self, size: Any, block_reason: str | None = None) -> int:
        if isinstance(size, int):
            atom = self.atoms.new(size)
            if block_reason:
                self.atoms.block(atom, block_reason)
        else:
            atom = self.atoms.new(DYNAMIC)
            self.atoms.block(atom, "dynamic size")
        return atom

    def union(self, a: int, b: int) -> None:
        # Two structures that fail to refine (3 x 4 against 4 x 3: a channel shuffle into a
        # grouped conv) leave the union half done and one structure detached from the tensor it
        # described, so blocking the two roots would not reach its leaves: block every leaf of
        # both, taken before the attempt. Only two defined atoms can conflict past the size check.
        both = self.atoms.definition(a) is not None and self.atoms.definition(b) is not None
        leaves = [*self.atoms.leaves(a), *self.atoms.leaves(b)] if both else []
        try:
            self.atoms.union(a, b)
        except StructureConflict as exc:
            for atom in [a, b, *leaves]:
                self.atoms.block(atom, str(exc))

    def block(self, atom: int, reason: str) -> None:
        self.atoms.block(atom, reason)

    def split_cat(self, atom: int, sizes: list[int]) -> list[int]:
        sizes_nz = [s for s in sizes if s]
        try:
            pieces = self.atoms.split_cat(atom, sizes_nz) if len(sizes_nz) > 1 else [atom]
        except StructureConflict as exc:
            self.atoms.block(atom, str(exc))
            pieces = [self.fresh(s, str(exc)) for s in sizes_nz]
        it = iter(pieces)
        return [next(it) if s else self.fresh(0) for s in sizes]

    def block_tensor(self, node: Any, reason: str) -> None:
        for atom in self.dims(node) or []:
            self.atoms.block(atom, reason)

    def block_node(self, node: fx.Node, reason: str) -> None:
        """An op we cannot reason about: freeze every space it touches."""
        for arg in _flat_nodes([*node.args, *node.kwargs.values()]):
            self.block_tensor(arg, reason)
            for dims in self.tuple_dims(arg) or []:
                for atom in dims or []:
                    self.atoms.block(atom, reason)
        val = self.val(node)
        if isinstance(val, torch.Tensor):
            self.set_dims(node, [self.fresh(s, reason) for s in self.shape(node)])
        elif isinstance(val, (tuple, list)):
            self.set_tuple_dims(
                node,
                [
                    [self.fresh(self._size_value(s), reason) for s in v.shape]
                    if isinstance(v, torch.Tensor)
                    else None
                    for v in val
                ],
            )
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        self.blocked_ops.append(BlockedOp(target_name(node), node.name, module, reason))

    def reshape_dims(
        self, in_dims: list[int], in_shape: list[Any], out_shape: list[Any]
    ) -> list[int]:
        """Couple the dims of a reshape: groups of input dims map onto groups of output dims."""
        out: list[int] = []
        i = j = 0
        n_in, n_out = len(in_shape), len(out_shape)
        while i < n_in or j < n_out:
            # size-1 dims carry no channels
            if i < n_in and in_shape[i] == 1 and (j >= n_out or out_shape[j] != 1):
                i += 1
                continue
            if j < n_out and out_shape[j] == 1 and (i >= n_in or in_shape[i] != 1):
                out.append(self.fresh(1))
                j += 1
                continue
            if i >= n_in or j >= n_out:
                break
            gi, gj = [i], [j]
            if not (isinstance(in_shape[i], int) and isinstance(out_shape[j], int)):
                if self.same_size(in_shape[i], out_shape[j]):
                    out.append(in_dims[i])
                    i, j = i + 1, j + 1
                    continue
                return self._reshape_fallback(in_dims, out_shape)
            pin, pout = in_shape[i], out_shape[j]
            while pin != pout:
                if pin < pout:
                    i2 = gi[-1] + 1
                    if i2 >= n_in or not isinstance(in_shape[i2], int):
                        return self._reshape_fallback(in_dims, out_shape)
                    gi.append(i2)
                    pin *= in_shape[i2]
                else:
                    j2 = gj[-1] + 1
                    if j2 >= n_out or not isinstance(out_shape[j2], int):
                        return self._reshape_fallback(in_dims, out_shape)
                    gj.append(j2)
                    pout *= out_shape[j2]
            src = self.atoms.prod([in_dims[k] for k in gi])
            if len(gj) == 1:
                out.append(src)
            else:
                sizes = [out_shape[k] for k in gj]
                leaves = self.atoms.leaves(src)  # `src` may be a new atom no tensor dim holds
                try:
                    out.extend(self.atoms.split_prod(src, sizes))
                except StructureConflict as exc:
                    for atom in [src, *leaves]:
                        self.atoms.block(atom, str(exc))
                    out.extend(self.fresh(s, str(exc)) for s in sizes)
            i, j = gi[-1] + 1, gj[-1] + 1
        return out

    def _reshape_fallback(self, in_dims: list[int], out_shape: list[Any]) -> list[int]:
        for atom in in_dims:
            self.atoms.block(atom, "reshape mixes the batch with channels")
        return [self.fresh(s, "reshape mixes the batch with channels") for s in out_shape]

    # ------------------------------------------------------------------ build
    def run(self, model: nn.Module | None) -> None:
        sig = self.ep.graph_signature
        specs = {s.arg.name: s for s in sig.input_specs if hasattr(s.arg, "name")}
        identity: dict[int, list[int]] = {}
        owners = _tensor_owners(model) if model is not None else {}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, specs.get(node.name), owners, identity)
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                for arg in _flat_nodes(node.args):
                    for atom in self.dims(arg) or []:
                        self.atoms.flag(atom, "io")
                    for dims in self.tuple_dims(arg) or []:
                        for atom in dims or []:
                            self.atoms.flag(atom, "io")
            elif node.op == "get_attr":
                self.block_node(node, "get_attr")

    def _placeholder(self, node, spec, owners, identity) -> None:
        shape = self.shape(node)
        if shape is None:
            return
        dims = [self.fresh(s) for s in shape]
        self.set_dims(node, dims)
        if spec is None or spec.kind == InputKind.USER_INPUT:
            for atom in dims:
                self.atoms.flag(atom, "io")
            return
        kind = {
            InputKind.PARAMETER: "parameter",
            InputKind.BUFFER: "buffer",
            InputKind.CONSTANT_TENSOR: "constant",
        }.get(spec.kind, "other")
        self.placeholder_target[node.name] = (spec.target, kind)
        if kind == "other":
            for atom in dims:
                self.atoms.block(atom, f"unsupported graph input {spec.kind}")
        # tied tensors: several names, one tensor object -> the same spaces
        key = owners.get(spec.target)
        if key is not None:
            if key in identity:
                first, twin_dims = identity[key]
                self.tied.update((first, spec.target))
                for a, b in zip(twin_dims, dims):
                    self.union(a, b)
            else:
                identity[key] = (spec.target, dims)

    def _call(self, node: fx.Node) -> None:
        name = target_name(node)
        rule = get_rule(name)
        if rule is None:
            if name in ("_operator.getitem",):
                rule = get_rule("getitem")
            elif not isinstance(node.target, torch._ops.OpOverload):
                # python-level ops on sizes (operator.mul on SymInts) have no tensor output
                if not isinstance(self.val(node), (torch.Tensor, tuple, list)):
                    return
        if rule is None:
            return self.block_node(node, "no rule for this op")
        try:
            rule(self, node)
        except Exception as exc:  # noqa: BLE001 - a failing rule must block, never guess
            self.block_node(node, f"rule failed: {type(exc).__name__}: {exc}")
            return
        if isinstance(self.val(node), torch.Tensor) and self.dims(node) is None:
            self.block_node(node, "rule produced no dims")


def _flat_nodes(value: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    if isinstance(value, fx.Node):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.extend(_flat_nodes(v))
    elif isinstance(value, dict):
        for v in value.values():
            out.extend(_flat_nodes(v))
    return out


def _tensor_owners(model: nn.Module) -> dict[str, int]:
    """Map every parameter/buffer name (duplicates included) to the id of its tensor."""
    owners: dict[str, int] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners[name] = id(p)
    for name, b in model.named_buffers(remove_duplicate=False):
        owners[name] = id(b)
    return owners


def collect_groups(tracer: Tracer) -> tuple[list[Group], dict[int, set[str]]]:
    """Leaf channel spaces that reach parameters and are neither blocked nor model I/O."""
    atoms = tracer.atoms
    all_dims = [a for dims in tracer.node_dims.values() if dims for a in dims]
    for dims_list in tracer.tuple_node_dims.values():
        for dims in dims_list:
            all_dims.extend(dims or [])
    flags = atoms.leaf_flags(all_dims)
    groups: dict[int, Group] = {}
    for node in tracer.ep.graph.nodes:
        if node.name not in tracer.placeholder_target:
            continue
        fqn, kind = tracer.placeholder_target[node.name]
        if not node.users and fqn not in tracer.tied:
            continue  # unused by the forward pass: nothing to gain
        for dim, atom in enumerate(tracer.dims(node) or []):
            leaves = atoms.leaves(atom)
            for pos, leaf in enumerate(leaves):
                if leaf in groups:
                    if all(m.name != fqn or m.dim != dim for m in groups[leaf].members):
                        groups[leaf].members.append(Member(fqn, dim, kind))
                    continue
                size = atoms.size(leaf)
                leaf_flags = flags.get(leaf, set())
                if size <= 1 or any(f == "io" or f.startswith("blocked") for f in leaf_flags):
                    continue
                if kind != "parameter":
                    continue  # a group must reach at least one parameter first
                key = f"{fqn}:{dim}" + (f"#{pos}" if len(leaves) > 1 else "")
                groups[leaf] = Group(key, leaf, size, [Member(fqn, dim, kind)])
    return list(groups.values()), flags
