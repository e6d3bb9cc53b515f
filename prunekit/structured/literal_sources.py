"""Which module attribute each shape literal came from, read from the model's source.

A size literal in the exported graph (`view(b, n, 16, 16)`) carries its value, not its origin.
When two attributes of a module hold the same value (LeViT: `num_heads == key_dim == 16`) and only
one of them is pruned, matching by value cannot tell them apart. The graph does know the file and
line of every op; where the call there writes the size as `self.<attr>`
(`x.view(B, N, self.num_heads, self.key_dim)`, `x.split([self.key_dim, self.val_dim], dim=3)`),
that attribute is bound to the position's new size exactly.
"""

from __future__ import annotations

import ast
import functools
import linecache
import re
from collections import defaultdict
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


def bound_atoms(graph: DependencyGraph) -> dict[str, dict[str, set[int]]]:
    """Per module (qualified name): attribute -> the atoms whose sizes ops take from it, written
    as `self.<attribute>` in their source (cached on the graph; a set, as one attribute may size
    several ops)."""
    if "bound_atoms" not in graph.cache:
        graph.cache["bound_atoms"] = _bind(graph)
    return graph.cache["bound_atoms"]


def _bind(graph: DependencyGraph) -> dict[str, dict[str, set[int]]]:
    out: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    tracer = graph.tracer
    for node in graph.exported.graph.nodes:
        name = target_name(node) if node.op == "call_function" else ""
        if name not in _METHODS or node.name not in tracer.notes:
            continue
        source = _source_sizes(node, _METHODS[name])
        atoms = _literal_atoms(tracer, node, name)
        if source is None or atoms is None or len(atoms) != len(source[1]):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        for expr, atom in zip(source[1], atoms):
            attr = _self_attribute(expr, source[0])
            if attr is not None:
                out[module][attr].add(atom)
    return out


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


def _source_sizes(node, methods: set[str]) -> tuple[str, list[ast.expr]] | None:
    """(the method's `self` name, the size expressions of the one call in the node's source line
    that can have produced it), or None when that is not clear."""
    frame = _user_frame(node.meta.get("stack_trace") or "")
    if frame is None:
        return None
    found = _statement(*frame)
    if found is None:
        return None
    self_name, statement = found
    calls = [c for c in ast.walk(statement) if isinstance(c, ast.Call)]
    sizes = [s for s in (_size_args(c, methods) for c in calls) if s is not None]
    return (self_name, sizes[0]) if len(sizes) == 1 else None


def _user_frame(stack_trace: str) -> tuple[str, int] | None:
    """File and line of the innermost frame of the trace, unless it is in torch or prunekit."""
    frames = _FRAME.findall(stack_trace)
    if not frames or is_library_file(frames[-1][0]):
        return None
    return frames[-1][0], int(frames[-1][1])


def _statement(filename: str, line: int) -> tuple[str, ast.stmt] | None:
    """(first parameter of the enclosing method, the innermost statement spanning `line`)."""
    return _statements(filename).get(line)


@functools.lru_cache(maxsize=64)
def _statements(filename: str) -> dict[int, tuple[str, ast.stmt]]:
    """Per line of every method in `filename`: the method's `self` name and the innermost
    statement spanning the line (a call may be reported at any line of its statement)."""
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return {}
    out: dict[int, tuple[str, ast.stmt]] = {}
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
                    out[line] = (self_name, statement)
    return out


def _size_args(call: ast.Call, methods: set[str]) -> list[ast.expr] | None:
    """The size expressions of `x.view(a, b)`, `x.view((a, b))`, `torch.reshape(x, (a, b))`,
    `x.split([a, b], dim)` or `x.split(a, dim)`; None for other calls."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in methods:
        return None
    args: list[Any] = list(call.args)
    if isinstance(func.value, ast.Name) and func.value.id == "torch":
        args = args[1:]  # the function form takes the tensor first
    if func.attr in {"split", "split_with_sizes"}:
        args = args[:1] or [k.value for k in call.keywords if k.arg == "split_size_or_sections"]
        if not args:
            return None
    if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
        return list(args[0].elts)
    return args if not any(isinstance(a, ast.Starred) for a in args) else None


def _self_attribute(expr: ast.expr, self_name: str) -> str | None:
    """`attr` when `expr` is `self.attr`."""
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        return expr.attr if expr.value.id == self_name else None
    return None
