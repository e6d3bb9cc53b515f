"""Fast capture: record the ATen ops of one forward pass on meta tensors.

`torch.export` (see `capture.py`) spends most of its time reasoning about symbolic shapes. The
dependency graph needs only the op sequence at the pre-dispatch level (the very ops export emits:
``aten.conv2d``, ``aten.linear``, ``aten.scaled_dot_product_attention``...) with their shapes. So we
run a structural copy of the model whose parameters and buffers are meta tensors (no data, no
compute) and record every op at the PreDispatch key into an FX graph shaped like an exported
program's (parameter, buffer, constant and user-input placeholders; an `ExportGraphSignature`).

The batch is recorded at `BATCH_TAG`, a prime no channel count is a multiple of: integer arguments
that are multiples of it are batch sizes and become ``sym_size`` expressions, so the recorded graph
runs at any batch size, like an export with a dynamic batch.

Recording refuses what it cannot represent faithfully (data-dependent ops, real tensors hidden in
the model, in-place updates of parameters or buffers...) by raising `RecordingError`; the caller
then falls back to `torch.export`.
"""

from __future__ import annotations

import operator
import re
import sys
from types import FrameType
from typing import Any

import torch
from torch import fx, nn
from torch._dispatch.python import enable_python_dispatcher
from torch.export.graph_signature import (
    ExportGraphSignature,
    InputKind,
    InputSpec,
    OutputKind,
    OutputSpec,
    TensorArgument,
)
from torch.fx.experimental.proxy_tensor import ProxyTorchDispatchMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map_only

from prunekit._copy import deep_copy
from prunekit._source import is_library_file

BATCH_TAG = 10007
META = torch.device("meta")


class RecordingError(RuntimeError):
    """The model cannot be recorded faithfully; use `torch.export` instead."""


def batch_multiple(size: Any, tag: int | None) -> int | None:
    """`k` when `size` is k x the recorded batch (a symbolic size), else None."""
    if tag is None or isinstance(size, bool) or not isinstance(size, int) or size == 0:
        return None
    return size // tag if size % tag == 0 else None


class RecordedProgram:
    """The recorded graph, with the parts of `torch.export.ExportedProgram` prunekit reads."""

    def __init__(self, graph_module, signature, state, constants, batch_tag, batch) -> None:
        self.graph_module: fx.GraphModule = graph_module
        self.graph_signature: ExportGraphSignature = signature
        self.state: dict[str, torch.Tensor] = state  # FQN -> the model's tensor at record time
        self.constants: dict[str, torch.Tensor] = constants
        self.batch_tag: int = batch_tag
        self.example_batch: int = max(batch, 2)  # the batch prunekit runs it at (1 widens to 2)

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    def _graph_module_flat_inputs(self, args: tuple, kwargs: dict) -> list[Any]:
        leaves = tree_leaves((tuple(args), dict(kwargs)))
        out: list[Any] = []
        for spec in self.graph_signature.input_specs:
            if spec.kind == InputKind.CONSTANT_TENSOR:
                out.append(self.constants[spec.target])
            elif spec.kind != InputKind.USER_INPUT:
                out.append(self.state[spec.target])
        return out + list(leaves)


class _PreDispatchRecorder(ProxyTorchDispatchMode):
    """Sees every op at the PreDispatch key (only proxy-like modes are admitted there)."""

    def __init__(self, builder: _GraphBuilder) -> None:
        TorchDispatchMode.__init__(self, torch._C.DispatchKey.PreDispatch)
        self._mode_key = torch._C._TorchDispatchModeKey.PROXY
        self.enter_stack = []
        self.pre_dispatch = True
        self.builder = builder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:
            return func(*args, **kwargs)
        return self.builder.record(func, args, kwargs)


class _GraphBuilder:
    def __init__(self, device: torch.device) -> None:
        self.graph = fx.Graph()
        self.device = device
        self.nodes: dict[int, fx.Node] = {}  # id(tensor) -> node producing it
        self.keep_alive: list[Any] = []  # ids stay unique while recording
        self.pending: dict[int, tuple[fx.Node, int]] = {}  # tuple elements not yet read
        self.factories: dict[tuple, fx.Node] = {}  # storage key -> factory op (no tensor inputs)
        self.fqn_of: dict[int, tuple[str, InputKind]] = {}
        self.state_ids: set[int] = set()
        self.constants: dict[str, torch.Tensor] = {}
        self.first_user: fx.Node | None = None
        self.batch_source: fx.Node | None = None
        self.sizes: dict[int, fx.Node] = {}
        self.module_stack: list[tuple[str, str]] = []
        self.non_persistent: set[str] = set()

    # ------------------------------------------------------------------ inputs
    def placeholder(self, name: str, value: Any) -> fx.Node:
        node = self.graph.placeholder(name)
        node.meta["val"] = value
        if isinstance(value, torch.Tensor) and id(value) not in self.nodes:
            self.nodes[id(value)] = node  # tied names: ops read the first one
            self.keep_alive.append(value)
        return node

    def constant(self, value: torch.Tensor) -> fx.Node:
        name = f"lifted_tensor_{len(self.constants)}"
        self.constants[name] = value
        anchor = self.first_user or next(iter(self.graph.find_nodes(op="output")), None)
        with self.graph.inserting_before(anchor):
            node = self.graph.placeholder(f"c_{name}")
        node.meta["val"] = value.to(META)
        self.fqn_of[id(node)] = (name, InputKind.CONSTANT_TENSOR)
        self.nodes[id(value)] = node
        self.keep_alive.append(value)
        return node

    # ------------------------------------------------------------------ ops
    def record(self, func, args: tuple, kwargs: dict) -> Any:
        self._refuse_state_mutation(func, args, kwargs)
        tensors = [v for v in tree_leaves((args, kwargs)) if isinstance(v, torch.Tensor)]
        run_args, run_kwargs = args, kwargs
        if any(t.device.type != "meta" for t in tensors):  # real constants: run their meta twins
            run_args, run_kwargs = tree_map_only(torch.Tensor, _on_meta, (args, kwargs))
        with torch._C._DisablePythonDispatcher():  # C++ meta kernels, not Python decompositions
            out = func(*run_args, **run_kwargs)
        node = self.graph.create_node(
            "call_function", func, self._arg(args), self._arg(kwargs), name=func._opname
        )  # named like export's nodes ("linear", "linear_1"...)
        node.meta["val"] = out
        if self.module_stack:
            node.meta["nn_module_stack"] = {fqn: (fqn, kind) for fqn, kind in self.module_stack}
        frame = _user_frame()
        if frame is not None:  # in the form torch.export writes it
            node.meta["stack_trace"] = (
                f'File "{frame.f_code.co_filename}", line {frame.f_lineno}, '
                f"in {frame.f_code.co_name}"
            )
        self.keep_alive.append(out)
        if isinstance(out, torch.Tensor):
            self.nodes[id(out)] = node
            if not tensors:  # a factory: its caller may receive a shallow copy
                self.factories[_storage_key(out)] = node
        elif isinstance(out, (tuple, list)):
            for i, v in enumerate(out):
                if isinstance(v, torch.Tensor):
                    self.pending[id(v)] = (node, i)
        return out

    def _refuse_state_mutation(self, func, args: tuple, kwargs: dict) -> None:
        schema = func._schema
        if not schema.is_mutable:
            return
        values = dict(zip((a.name for a in schema.arguments), args)) | kwargs
        for a in schema.arguments:
            if a.alias_info is None or not a.alias_info.is_write:
                continue
            value = values.get(a.name)
            if isinstance(value, torch.Tensor):
                base = value._base if value._base is not None else value
                if id(base) in self.state_ids or id(value) in self.state_ids:
                    raise RecordingError(f"{func} updates a parameter or buffer in place")

    def node_of(self, t: torch.Tensor) -> fx.Node:
        key = id(t)
        if key in self.nodes:
            return self.nodes[key]
        if key in self.pending:
            parent, index = self.pending.pop(key)
            node = self.graph.call_function(operator.getitem, (parent, index))
            node.meta["val"] = t
            node.meta.update({k: v for k, v in parent.meta.items() if k == "nn_module_stack"})
            self.nodes[key] = node
            return node
        if _storage_key(t) in self.factories:
            return self.factories[_storage_key(t)]
        if t.device.type == "meta":
            raise RecordingError(f"a tensor {tuple(t.shape)} appeared that no recorded op produced")
        return self.constant(t)

    def _arg(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.node_of(value)
        if isinstance(value, (list, tuple)):
            items = [self._arg(v) for v in value]
            return type(value)(items) if isinstance(value, tuple) else items
        if isinstance(value, dict):
            return {k: self._arg(v) for k, v in value.items()}
        if isinstance(value, torch.device) and value.type == "meta":
            return self.device
        if isinstance(value, (torch.SymInt, torch.SymFloat)):
            raise RecordingError("symbolic sizes are not expected while recording")
        k = batch_multiple(value, BATCH_TAG)
        return self.batch_size(k) if k is not None else value

    def batch_size(self, k: int) -> fx.Node:
        """A node computing k x the batch size (read from the first batched user input)."""
        if k in self.sizes:
            return self.sizes[k]
        if self.batch_source is None:
            raise RecordingError("a batch-sized integer appeared but no input carries the batch")
        with self.graph.inserting_after(self._last_placeholder()):
            base = self.sizes.get(1)
            if base is None:
                base = self.graph.create_node(
                    "call_function",
                    torch.ops.aten.sym_size.int,
                    (self.batch_source, 0),
                    name="sym_size_int",
                )
                base.meta["val"] = BATCH_TAG
                self.sizes[1] = base
            if k == 1:
                return base
        with self.graph.inserting_after(base):
            node = self.graph.call_function(operator.mul, (base, k))
        node.meta["val"] = BATCH_TAG * k
        self.sizes[k] = node
        return node

    def _last_placeholder(self) -> fx.Node:
        return list(self.graph.find_nodes(op="placeholder"))[-1]

    def output(self, result: Any) -> None:
        leaves = [self.node_of(t) for t in tree_leaves(result) if isinstance(t, torch.Tensor)]
        self.graph.output(tuple(leaves))


def _on_meta(t: torch.Tensor) -> torch.Tensor:
    return t if t.device.type == "meta" else t.to(META)


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _meta_twin(model: nn.Module) -> tuple[nn.Module, list[tuple[InputKind, str, torch.Tensor]]]:
    """A structural copy of `model` whose parameters and buffers are empty meta tensors.

    Also returns (kind, name, meta tensor) for every name, tied names included (as export does).
    """
    memo: dict[int, Any] = {}
    state: list[tuple[InputKind, str, torch.Tensor]] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(torch.empty_like(p, device=META), requires_grad=False)
        state.append((InputKind.PARAMETER, name, memo[id(p)]))
    for name, b in model.named_buffers(remove_duplicate=False):
        if id(b) not in memo:
            memo[id(b)] = torch.empty_like(b, device=META)
        state.append((InputKind.BUFFER, name, memo[id(b)]))
    return deep_copy(model, memo).eval(), state


def _meta_input(value: Any, batch: int | None) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    shape = list(value.shape)
    if batch is not None and value.dim() and shape[0] == batch:
        shape[0] = BATCH_TAG
    return torch.empty(shape, dtype=value.dtype, device=META)


def record(model: nn.Module, args: tuple, kwargs: dict, batch: int | None) -> RecordedProgram:
    """Record `model(*args, **kwargs)` in eval mode; `batch` is the inputs' batch size."""
    if batch is None:
        raise RecordingError("the inputs do not share one batch size")
    device = _device_of(model, args, kwargs)
    twin, twin_state = _meta_twin(model)
    builder = _GraphBuilder(device)
    originals = dict(model.named_parameters(remove_duplicate=False))
    originals.update(model.named_buffers(remove_duplicate=False))
    builder.non_persistent = {
        f"{prefix}.{b}" if prefix else b
        for prefix, m in model.named_modules()
        for b in m._non_persistent_buffers_set
    }
    state: dict[str, torch.Tensor] = {}
    for kind, fqn, value in twin_state:
        prefix = "p_" if kind == InputKind.PARAMETER else "b_"
        node = builder.placeholder(prefix + re.sub(r"\W", "_", fqn), value)
        builder.fqn_of[id(node)] = (fqn, kind)
        builder.state_ids.add(id(value))
        state[fqn] = originals[fqn].detach()
    meta_args = tuple(_meta_input(a, batch) for a in args)
    meta_kwargs = {k: _meta_input(v, batch) for k, v in kwargs.items()}
    leaves, _ = tree_flatten((meta_args, meta_kwargs))
    for i, leaf in enumerate(leaves):
        node = builder.placeholder(f"input_{i}", leaf)
        builder.first_user = builder.first_user or node
        if builder.batch_source is None and isinstance(leaf, torch.Tensor) and leaf.dim():
            if leaf.shape[0] == BATCH_TAG:
                builder.batch_source = node
    result = _run(twin, meta_args, meta_kwargs, builder)
    builder.output(result)
    return _program(builder, state, batch)


def _run(twin, args, kwargs, builder: _GraphBuilder) -> Any:
    names = {id(m): n for n, m in twin.named_modules() if n}

    def enter(module, _inputs):
        name = names.get(id(module))
        if name is not None:
            builder.module_stack.append((name, type(module).__qualname__))

    def leave(module, _inputs, _output):
        if names.get(id(module)) is not None and builder.module_stack:
            builder.module_stack.pop()

    hooks = [
        nn.modules.module.register_module_forward_pre_hook(enter),
        nn.modules.module.register_module_forward_hook(leave),
    ]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with enable_python_dispatcher(), _PreDispatchRecorder(builder):
            return twin(*args, **kwargs)
    except RecordingError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything meta tensors cannot run
        raise RecordingError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in hooks:
            h.remove()


def _program(builder: _GraphBuilder, state: dict[str, torch.Tensor], batch: int) -> RecordedProgram:
    inputs = []
    for node in builder.graph.find_nodes(op="placeholder"):
        fqn, kind = builder.fqn_of.get(id(node), (None, InputKind.USER_INPUT))
        persistent = (fqn not in builder.non_persistent) if kind == InputKind.BUFFER else None
        inputs.append(InputSpec(kind, TensorArgument(node.name), fqn, persistent))
    out_node = next(iter(builder.graph.find_nodes(op="output")))
    outputs = [
        OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(n.name), None) for n in out_node.args[0]
    ]
    gm = fx.GraphModule(nn.Module(), builder.graph)
    signature = ExportGraphSignature(inputs, outputs)
    return RecordedProgram(gm, signature, state, builder.constants, BATCH_TAG, batch)


def _device_of(model: nn.Module, args: tuple, kwargs: dict) -> torch.device:
    for t in [*model.parameters(), *model.buffers(), *tree_leaves((args, kwargs))]:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _user_frame() -> FrameType | None:
    """The innermost Python frame outside torch and prunekit: the model code calling the op."""
    frame = sys._getframe(1)
    while frame is not None and is_library_file(frame.f_code.co_filename):
        frame = frame.f_back
    return frame
