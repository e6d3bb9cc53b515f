"""Which module attribute each shape literal came from, read from the model's source.

A size literal in the exported graph (`view(b, n, 16, 16)`) carries its value, not its origin.
When two attributes of a module hold the same value (LeViT: `num_heads == key_dim == 16`) and only
one of them is pruned, matching by value cannot tell them apart. The graph does know the file and
line of every op; where the call there writes the size as `self.<attr>`
(`x.view(B, N, self.num_heads, self.key_dim)`, `x.split([self.key_dim, self.val_dim], dim=3)`),
that attribute is bound to the position's new size exactly. Where it writes a product of a
run-time size and an attribute (`x.reshape(B * self.num_heads, self.head_dim, -1)`: heads folded
into the batch), the attribute scales with the position. Such literals, and those written `-1`,
then say nothing about the module's other attributes of the same value.
"""

from __future__ import annotations

import ast
import functools
import linecache
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prunekit._source import is_library_file
from prunekit.graph.rules import target_name

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

# aten op -> the Python method / torch function names that produce it
_METHODS = {
    "aten.view.default": {"view", "reshape"},
    "aten.reshape.default": {"view", "reshape"},
    "aten._unsafe_view.default": {"view", "reshape"},
    "aten.split_with_sizes.default": {"split", "split_with_sizes"},
    "aten.split.Tensor": {"split"},
}
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in \w+')


@dataclass
class LiteralSources:
    """What the model's source says about the size literals of its ops, per module (qualified
    name): `bound[module][attr]`, the atoms whose sizes ops take from `self.<attr>` (a set, as
    one attribute may size several ops); `explained[module]`, the atoms whose literal is not a
    free number: bound ones, and those written `-1` (inferred by the op)."""

    bound: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    explained: dict[str, set[int]] = field(default_factory=dict)
    # attributes that give all the sizes of a call at once (`torch.split(x, self.splits, 1)`,
    # `x.view(self.shape)`): per module and attribute, the atoms of each such call, in order
    sequences: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)
    # `B * self.<attr>`: the atoms whose size is a run-time size times the attribute
    factors: dict[str, dict[str, set[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Whole:
    """A size argument that is every size at once (`self.splits`)."""

    expr: Any


def literal_sources(graph: DependencyGraph) -> LiteralSources:
    """The graph's `LiteralSources` (read once, cached on the graph)."""
    if "literal_sources" not in graph.cache:
        graph.cache["literal_sources"] = _read_sources(graph)
    return graph.cache["literal_sources"]


def _read_sources(graph: DependencyGraph) -> LiteralSources:
    bound: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    explained: dict[str, set[int]] = defaultdict(set)
    sequences: dict[str, dict[str, list[list[int]]]] = defaultdict(lambda: defaultdict(list))
    factors: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    tracer = graph.tracer
    for node in graph.exported.graph.nodes:
        name = target_name(node) if node.op == "call_function" else ""
        if name not in _METHODS or node.name not in tracer.notes:
            continue
        atoms = _literal_atoms(tracer, node, name)
        source = _source_sizes(node, _METHODS[name], len(atoms) if atoms else 0)
        if source is None or atoms is None:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        module = _owner(graph.model, list(stack.values())[-1][0] if stack else "", source[2])
        if source[1] and isinstance(source[1][0], _Whole):
            attr = _self_attribute(source[1][0].expr, source[0])
            if attr is not None:
                sequences[module][attr].append(list(atoms))
                explained[module].update(atoms)
            continue
        for expr, atom in zip(source[1], atoms):
            attr = _self_attribute(expr, source[0])
            factor = _factor_attribute(expr, source[0]) if attr is None else None
            if attr is not None:
                bound[module][attr].add(atom)
            elif factor is not None:
                factors[module][factor].add(atom)
            if attr is not None or factor is not None or _is_minus_one(expr):
                explained[module].add(atom)
    return LiteralSources(
        bound={module: dict(attrs) for module, attrs in bound.items()},
        explained=dict(explained),
        sequences={module: dict(attrs) for module, attrs in sequences.items()},
        factors={module: dict(attrs) for module, attrs in factors.items()},
    )


def _literal_atoms(tracer, node, name: str) -> list[int] | None:
    """The atoms whose sizes the op's size arguments give, in the order they are written."""
    if name == "aten.split.Tensor" or name == "aten.split_with_sizes.default":
        dim = tracer.notes[node.name].get("literal_split")
        pieces = tracer.tuple_node_dims.get(node.name) or []
        if dim is None or not pieces or not all(pieces):
            return None
        atoms = [piece[dim] for piece in pieces]
        return atoms[:1] if name == "aten.split.Tensor" else atoms
    return tracer.node_dims.get(node.name)


def _owner(model: Any, name: str, class_name: str) -> str:
    """The module whose method holds the source line: the innermost module of the call stack,
    or, when its class does not define that method (a parent calling `self.rel.get_bias()`),
    the one module under it whose class does."""
    try:
        root = model.get_submodule(name) if name else model
    except AttributeError:
        return name
    if _defines(type(root), class_name):
        return name
    found = [sub for sub, m in root.named_modules() if sub and _defines(type(m), class_name)]
    if len(found) != 1:
        return name
    return f"{name}.{found[0]}" if name else found[0]


def _defines(cls: type, class_name: str) -> bool:
    return any(c.__name__ == class_name for c in cls.__mro__)


def _source_sizes(node, methods: set[str], count: int) -> tuple[str, list[Any], str] | None:
    """(the method's `self` name, the `count` size expressions of the one call in the node's
    source line that can have produced it, None where a `*args` covers them, the name of the
    class defining the method), or None when that is not clear."""
    frame = _user_frame(node.meta.get("stack_trace") or "")
    if frame is None or count == 0:
        return None
    found = _statement(*frame)
    if found is None:
        return None
    self_name, statement, class_name = found
    calls = [c for c in ast.walk(statement) if isinstance(c, ast.Call)]
    sizes = [s for s in (_size_args(c, methods, count) for c in calls) if s is not None]
    return (self_name, sizes[0], class_name) if len(sizes) == 1 else None


def _user_frame(stack_trace: str) -> tuple[str, int] | None:
    """File and line of the innermost frame of the trace, unless it is in torch or prunekit."""
    frames = _FRAME.findall(stack_trace)
    if not frames or is_library_file(frames[-1][0]):
        return None
    return frames[-1][0], int(frames[-1][1])


def _statement(filename: str, line: int) -> tuple[str, ast.stmt, str] | None:
    """(first parameter of the enclosing method, the innermost statement spanning `line`, the
    name of the class defining the method)."""
    return _statements(filename).get(line)


@functools.lru_cache(maxsize=64)
def _statements(filename: str) -> dict[int, tuple[str, ast.stmt, str]]:
    """Per line of every method in `filename`: the method's `self` name and the innermost
    statement spanning the line (a call may be reported at any line of its statement)."""
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return {}
    out: dict[int, tuple[str, ast.stmt, str]] = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for method in cls.body:
            if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not method.args.args:
                continue
            self_name = method.args.args[0].arg
            statements = [n for n in ast.walk(method) if isinstance(n, ast.stmt)][1:]
            # outer statements first, so inner ones overwrite their lines
            for statement in sorted(statements, key=lambda n: n.lineno - (n.end_lineno or 0)):
                for line in range(statement.lineno, (statement.end_lineno or statement.lineno) + 1):
                    out[line] = (self_name, statement, cls.name)
    return out


def _size_args(call: ast.Call, methods: set[str], count: int) -> list[Any] | None:
    """The `count` size expressions of `x.view(a, b)`, `x.view((a, b))`, `torch.reshape(x,
    (a, b))`, `x.reshape(*shape, -1)`, `x.split([a, b], dim)` or `x.split(a, dim)` (None where a
    `*args` stands); None for other calls, or when they cannot make `count` sizes."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in methods:
        return None
    args: list[Any] = list(call.args)
    if isinstance(func.value, ast.Name) and func.value.id == "torch":
        args = args[1:]  # the function form takes the tensor first
    if func.attr in {"split", "split_with_sizes"}:
        args = args[:1] or [k.value for k in call.keywords if k.arg == "split_size_or_sections"]
    if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
        args = list(args[0].elts)
    elif len(args) == 1 and count > 1 and not isinstance(args[0], (ast.Starred, ast.Constant)):
        return [_Whole(args[0])] * count  # one expression for all the sizes
    starred = [i for i, a in enumerate(args) if isinstance(a, ast.Starred)]
    if len(starred) > 1 or (not starred and len(args) != count):
        return None
    if starred:  # one *args: the sizes around it align from both ends
        i, covered = starred[0], count - (len(args) - 1)
        if covered < 0:
            return None
        args = args[:i] + [None] * covered + args[i + 1 :]
    return args


def _is_minus_one(expr: Any) -> bool:
    return (
        isinstance(expr, ast.UnaryOp)
        and isinstance(expr.op, ast.USub)
        and isinstance(expr.operand, ast.Constant)
        and expr.operand.value == 1
    )


def _self_attribute(expr: Any, self_name: str) -> str | None:
    """`attr` when `expr` is `self.attr`."""
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        return expr.attr if expr.value.id == self_name else None
    return None


def _factor_attribute(expr: Any, self_name: str) -> str | None:
    """`attr` when `expr` is `n * self.attr` or `self.attr * n` with `n` free of `self`."""
    if not (isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult)):
        return None
    for this, other in ((expr.left, expr.right), (expr.right, expr.left)):
        attr = _self_attribute(this, self_name)
        uses_self = any(isinstance(n, ast.Name) and n.id == self_name for n in ast.walk(other))
        if attr is not None and not uses_self:
            return attr
    return None
