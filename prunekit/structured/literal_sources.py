"""Which module attribute each shape literal came from, read from the model's source.

A size literal in the exported graph (`view(b, n, 16, 16)`) carries its value, not its origin.
When two attributes of a module hold the same value (LeViT: `num_heads == key_dim == 16`) and only
one of them is pruned, matching by value cannot tell them apart. The graph does know the file and
line of every op; where the call there writes the size as `self.<attr>`
(`x.view(B, N, self.num_heads, self.key_dim)`, `x.split([self.key_dim, self.val_dim], dim=3)`),
that attribute is bound to the position's new size exactly. Where it writes a product of a
run-time size and an attribute (`x.reshape(B * self.num_heads, self.head_dim, -1)`: heads folded
into the batch), the attribute scales with the position. Such literals, and those written `-1`
or read from a tensor at run time (`x.view(-1, x.size(1), x.size(-1))`, `x.size()[:-1] + (-1,)`),
then say nothing about the module's other attributes of the same value (DeBERTa-v2's
`position_buckets == head_dim == 16`). A shape held in a local variable assigned once in the
method (`new_shape = x.size()[:-1] + (self.heads, -1)`, then `x.view(new_shape)`) is read there.
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
    # atoms whose size the code writes as a number (`x.view(b, n, 2, 4)`): no rewrite of the
    # module can change it, so the eager model runs only with them whole
    fixed: set[int] = field(default_factory=set)


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
    fixed: set[int] = set()
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
            inferred = _is_minus_one(expr) or _is_size_read(expr, source[0])
            if attr is not None or factor is not None or inferred:
                explained[module].add(atom)
            elif _is_number(expr):
                fixed.add(atom)
    return LiteralSources(
        bound={module: dict(attrs) for module, attrs in bound.items()},
        explained=dict(explained),
        sequences={module: dict(attrs) for module, attrs in sequences.items()},
        factors={module: dict(attrs) for module, attrs in factors.items()},
        fixed=fixed,
    )


def _is_number(expr: Any) -> bool:
    """A size written as a positive integer (`4`, not `-1`)."""
    return isinstance(expr, ast.Constant) and type(expr.value) is int and expr.value > 0


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
    """(the `self` name of the method holding the call, the `count` size expressions of the one
    call in the node's source line that can have produced it, None where a `*args` covers
    them, the name of the class defining the method), or None when that is not clear."""
    frame = _user_frame(node.meta.get("stack_trace") or "")
    if frame is None or count == 0:
        return None
    found = _statement(*frame)
    if found is None:
        return None
    self_name, statement, class_name, method = found
    context = _Context(frame[0], class_name, methods, count)
    sizes = _calls_in(context, statement, self_name, method)
    if not sizes:  # torch.export names only `forward` frames: the op may be in a helper
        sizes = _in_helpers(context, statement, self_name, set(), 0)
    return (sizes[0][0], sizes[0][1], class_name) if len(sizes) == 1 else None


@dataclass(frozen=True)
class _Context:
    """What is looked for: calls of `methods` making `count` sizes, in methods of `class_name`
    and functions of `filename`."""

    filename: str
    class_name: str
    methods: set[str]
    count: int


def _calls_in(context: _Context, tree: Any, self_name: str, method: Any) -> list[tuple]:
    """(self name, sizes) of every call in `tree` that can have produced the op."""
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call)]
    found = (_size_args(c, context.methods, context.count, self_name, method) for c in calls)
    return [(self_name, sizes) for sizes in found if sizes is not None]


def _helpers(context: _Context, tree: Any, self_name: str) -> list[tuple[Any, str]]:
    """(definition, its `self` name) of the methods of the class (`self.<name>(...)`) and the
    functions of the file (`<name>(...)`) that `tree` calls."""
    methods, functions = _definitions(context.filename)
    out = []
    for call in (c for c in ast.walk(tree) if isinstance(c, ast.Call)):
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if self_name and func.value.id == self_name:
                method = methods.get((context.class_name, func.attr))
                if method is not None and method.args.args:
                    out.append((method, method.args.args[0].arg))
        elif isinstance(func, ast.Name) and func.id in functions:
            out.append((functions[func.id], ""))  # no `self`: no attribute is read there
    return out


def _in_helpers(context: _Context, tree: Any, self_name: str, seen: set, depth: int) -> list:
    """The candidate calls in the helpers `tree` calls and, a few calls deep, in theirs."""
    found: list[tuple] = []
    for definition, inner_self in _helpers(context, tree, self_name):
        if definition in seen or depth >= 3:
            continue
        seen.add(definition)
        found += _calls_in(context, definition, inner_self, definition)
        found += _in_helpers(context, definition, inner_self, seen, depth + 1)
    return found


@functools.lru_cache(maxsize=64)
def _tree(filename: str) -> ast.Module | None:
    """The parsed source of a file (None when it does not parse), read once."""
    try:
        return ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return None


@functools.lru_cache(maxsize=64)
def _definitions(filename: str) -> tuple[dict[tuple[str, str], Any], dict[str, Any]]:
    """The methods (by class and name) and the module-level functions of a file."""
    tree = _tree(filename)
    if tree is None:
        return {}, {}
    methods = {
        (cls.name, m.name): m
        for cls in ast.walk(tree)
        if isinstance(cls, ast.ClassDef)
        for m in cls.body
        if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    functions = {
        f.name: f for f in tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    return methods, functions


def _user_frame(stack_trace: str) -> tuple[str, int] | None:
    """File and line of the innermost frame of the trace, unless it is in torch or prunekit."""
    frames = _FRAME.findall(stack_trace)
    if not frames or is_library_file(frames[-1][0]):
        return None
    return frames[-1][0], int(frames[-1][1])


def _statement(filename: str, line: int) -> tuple[str, ast.stmt, str, ast.AST] | None:
    """(first parameter of the enclosing method, the innermost statement spanning `line`, the
    name of the class defining the method, the method)."""
    return _statements(filename).get(line)


@functools.lru_cache(maxsize=64)
def _statements(filename: str) -> dict[int, tuple[str, ast.stmt, str, ast.AST]]:
    """Per line of every method in `filename`: the method's `self` name and the innermost
    statement spanning the line (a call may be reported at any line of its statement)."""
    tree = _tree(filename)
    if tree is None:
        return {}
    out: dict[int, tuple[str, ast.stmt, str, ast.AST]] = {}
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
                    out[line] = (self_name, statement, cls.name, method)
    return out


@dataclass(frozen=True)
class _Scope:
    """Where a call is: the method's `self` name, the method, the call's line."""

    self_name: str
    method: Any
    line: int


class _RunTimeSize:
    """A size read from a tensor at run time (one of `x.size()[:-1]`'s)."""


_RUN_TIME = _RunTimeSize()


@dataclass(frozen=True)
class _Span:
    """Sizes of unknown number in a shape expression: read from a tensor at run time
    (`x.size()[:-1]`), or not known at all (`*shape`)."""

    run_time: bool


def _size_args(
    call: ast.Call, methods: set[str], count: int, self_name: str, method: Any
) -> list[Any] | None:
    """The `count` size expressions of `x.view(a, b)`, `x.view((a, b))`, `torch.reshape(x,
    (a, b))`, `x.reshape(*shape, -1)`, `x.view(x.size()[:-1] + (a, -1))`, `x.view(shape)` with
    `shape` assigned once in the method, `x.split([a, b], dim)` or `x.split(a, dim)` (None where
    a `*args` of unknown origin stands, `_RUN_TIME` for sizes read from a tensor); None for
    other calls, or when they cannot make `count` sizes."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in methods:
        return None
    scope = _Scope(self_name, method, call.lineno)
    args: list[Any] = list(call.args)
    if isinstance(func.value, ast.Name) and func.value.id == "torch":
        args = args[1:]  # the function form takes the tensor first
    if func.attr in {"split", "split_with_sizes"}:
        args = args[:1] or [k.value for k in call.keywords if k.arg == "split_size_or_sections"]
    items: list[Any] = []
    if len(args) == 1 and not isinstance(args[0], (ast.Starred, ast.Constant)):
        sequence = _sequence(args[0], scope)
        if sequence is not None:
            items = sequence
        elif count > 1:
            return [_Whole(args[0])] * count  # one expression for all the sizes
        else:
            items = args
    else:
        for arg in args:
            inner = _sequence(arg.value, scope) if isinstance(arg, ast.Starred) else [arg]
            items += inner if inner is not None else [_Span(run_time=False)]
    spans = [i for i, a in enumerate(items) if isinstance(a, _Span)]
    if len(spans) > 1 or (not spans and len(items) != count):
        return None
    if spans:  # one span: the sizes around it align from both ends
        i, covered = spans[0], count - (len(items) - 1)
        if covered < 0:
            return None
        fill = _RUN_TIME if items[i].run_time else None
        items = items[:i] + [fill] * covered + items[i + 1 :]
    return items


def _sequence(expr: Any, scope: _Scope, depth: int = 0) -> list[Any] | None:
    """The sizes a shape expression lists, in order (`_Span`s where a number of them is not
    written out): a tuple or list, `x.size()` or `x.shape` (sliced or not), a sum of those, or
    a local variable assigned one of them once in the method; None for anything else."""
    if isinstance(expr, (ast.Tuple, ast.List)):
        out: list[Any] = []
        for element in expr.elts:
            if not isinstance(element, ast.Starred):
                out.append(element)
                continue
            inner = _sequence(element.value, scope, depth)
            out += inner if inner is not None else [_Span(run_time=False)]
        return out
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left, right = _sequence(expr.left, scope, depth), _sequence(expr.right, scope, depth)
        return None if left is None or right is None else left + right
    if _tensor_sizes(expr, scope.self_name, sliced=True):
        return [_Span(run_time=True)]
    if isinstance(expr, ast.Name) and depth < 4:
        value = _assigned_once(scope, expr.id)
        return None if value is None else _sequence(value, scope, depth + 1)
    return None


def _assigned_once(scope: _Scope, name: str) -> Any:
    """The value of `name = value` when that is the only binding of `name` in the method and
    comes before the call; else None."""
    method = scope.method
    if name in {a.arg for a in ast.walk(method.args) if isinstance(a, ast.arg)}:
        return None
    stores = [
        n
        for n in ast.walk(method)
        if isinstance(n, ast.Name) and n.id == name and not isinstance(n.ctx, ast.Load)
    ]
    if len(stores) != 1:
        return None
    for statement in ast.walk(method):
        if (
            isinstance(statement, ast.Assign)
            and statement.targets == stores
            and (statement.end_lineno or statement.lineno) < scope.line
        ):
            return statement.value
    return None


def _tensor_sizes(expr: Any, self_name: str, *, sliced: bool) -> bool:
    """Whether `expr` reads sizes of a tensor: `x.size()` or `x.shape` (`sliced`: also
    `x.size()[a:b]`, `x.shape[a:b]`), of anything but the module itself (`self.shape` is an
    attribute)."""
    if sliced and isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Slice):
        expr = expr.value
    if isinstance(expr, ast.Call):
        func = expr.func
        if not (isinstance(func, ast.Attribute) and func.attr == "size"):
            return False
        if expr.args or expr.keywords:
            return False
        owner = func.value
    elif isinstance(expr, ast.Attribute) and expr.attr == "shape":
        owner = expr.value
    else:
        return False
    return not (isinstance(owner, ast.Name) and owner.id == self_name)


def _is_size_read(expr: Any, self_name: str) -> bool:
    """Whether `expr` is one size of a tensor read at run time: `x.size(i)`, `x.shape[i]`,
    `x.size()[i]` (an index written as a number), or one of `x.size()[:-1]`'s."""
    if expr is _RUN_TIME:
        return True
    if isinstance(expr, ast.Subscript) and _is_index(expr.slice):
        return _tensor_sizes(expr.value, self_name, sliced=False)
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)):
        return False
    owner = expr.func.value
    return (
        expr.func.attr == "size"
        and len(expr.args) == 1
        and not expr.keywords
        and _is_index(expr.args[0])
        and not (isinstance(owner, ast.Name) and owner.id == self_name)
    )


def _is_index(expr: Any) -> bool:
    """An integer written as a number (`1`, `-1`)."""
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
        expr = expr.operand
    return isinstance(expr, ast.Constant) and type(expr.value) is int


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
