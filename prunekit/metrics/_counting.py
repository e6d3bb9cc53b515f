"""One instrumented forward pass: MACs (dense and sparse) per layer, activation traffic, peak memory.

Two dispatch modes are stacked. `torch.utils.flop_counter.FlopCounterMode` (outer) owns the FLOP
formulas; `_CostMode` (inner) sees each ATen op first, as the model called it, and reads how much
the counter's total grew while running that op. That gives per-op MACs without a hand-written
counter, which the inner mode then attributes to the innermost module running (kept by global
module hooks) and scales by the density of the op's weight operand. The same mode counts
activation elements read and written and follows the bytes of live intermediate tensors.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from prunekit.metrics._call import effective_parameters

aten = torch.ops.aten

# Ops that allocate without writing meaningful data: no activation traffic.
_ALLOCATORS = {
    aten.empty.memory_format,
    aten.empty_like.default,
    aten.empty_strided.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
}


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _recurrent_flop(input_shape, hx, params, has_biases, num_layers, dropout, train,
                    bidirectional, batch_first, *args, out_shape=None, **kwargs) -> int:  # fmt: skip
    """nn.LSTM / nn.RNN as one op: every weight matrix (each layer, each direction) multiplies
    one vector per sequence element and step."""
    if len(input_shape) == 2:  # unbatched: (steps, features)
        vectors = input_shape[0]
    else:
        vectors = input_shape[0] * input_shape[1]  # batch x steps, in either order
    return 2 * vectors * sum(math.prod(p) for p in params if len(p) == 2)


# FLOP formulas FlopCounterMode lacks on CPU (it knows the CUDA flash/efficient kernels only,
# and has none for the fused recurrent ops). Formulas are looked up by op packet; an op whose
# overload is not a key is decomposed first (into uncounted kernels, for nn.LSTM), so the
# recurrent ops are keyed by both.
EXTRA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    **{op: _recurrent_flop for op in (aten.lstm, aten.lstm.input)},
    **{op: _recurrent_flop for op in (aten.rnn_tanh, aten.rnn_tanh.input)},
    **{op: _recurrent_flop for op in (aten.rnn_relu, aten.rnn_relu.input)},
}


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    """Identity of a tensor's memory (shared by views, tied weights); None for empty tensors."""
    if t.numel() == 0:
        return None
    try:
        return (str(t.device), t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return None


def _density(t: torch.Tensor) -> float:
    return float(torch.count_nonzero(t)) / t.numel()


def _is_view(func: Any) -> bool:
    """True for ops whose outputs alias an input without writing (view, transpose, expand...)."""
    returns = func._schema.returns
    return bool(returns) and all(
        r.alias_info is not None and not r.alias_info.is_write for r in returns
    )


@dataclass
class LayerCost:
    type: str
    macs: int = 0
    nonzero_macs: float = 0.0
    params: int = 0
    nonzero: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "macs": int(self.macs),
            "nonzero_macs": int(round(self.nonzero_macs)),
            "params": int(self.params),
            "nonzero": int(self.nonzero),
        }


@dataclass
class Costs:
    macs: int = 0
    nonzero_macs: float = 0.0
    activation_elements: int = 0
    peak_live_bytes: int = 0  # intermediate tensors only
    baseline_bytes: int = 0  # parameters, buffers and inputs, alive throughout
    layers: dict[str, LayerCost] = field(default_factory=dict)


class _ModuleStack:
    """Which named modules of the model are running, innermost last (global forward hooks)."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): name for name, m in model.named_modules()}
        self.stack: list[nn.Module] = []

    def _push(self, module: nn.Module, args: Any) -> None:
        self.stack.append(module)

    def _pop(self, module: nn.Module, args: Any, output: Any) -> None:
        # Pop through `module` (always_call hooks also run when forward raises).
        while self.stack:
            if self.stack.pop() is module:
                break

    def innermost(self) -> tuple[str, nn.Module | None]:
        for module in reversed(self.stack):
            name = self.names.get(id(module))
            if name is not None:
                return name, module
        return "", None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        pre = register_module_forward_pre_hook(self._push)
        post = register_module_forward_hook(self._pop, always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()
            self.stack.clear()


class _CostMode(TorchDispatchMode):
    def __init__(
        self,
        counter: FlopCounterMode,
        modules: _ModuleStack,
        weight_keys: set[tuple[str, int]],
        known_keys: set[tuple[str, int]],
        costs: Costs,
    ) -> None:
        super().__init__()
        self.counter = counter
        self.modules = modules
        self.weight_keys = weight_keys  # storages of parameters and buffers
        self.known_keys = known_keys  # storages alive before the pass (weights, inputs)
        self.costs = costs
        self.live: dict[tuple[str, int], weakref.ref] = {}
        self.live_bytes = 0

    # -- weights ---------------------------------------------------------------------------

    def _dynamic_weight_keys(self, module: nn.Module | None) -> set[tuple[str, int]]:
        """Plain tensor attributes of the running module, e.g. the `weight` that
        `torch.nn.utils.prune` recomputes from `weight_orig * weight_mask` before each call."""
        if module is None:
            return set()
        keys = set()
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and (key := _storage_key(value)) is not None:
                keys.add(key)
        return keys

    # -- memory ----------------------------------------------------------------------------

    def _freed(self, key: tuple[str, int], nbytes: int) -> Callable[[Any], None]:
        def callback(_: Any) -> None:
            if self.live.pop(key, None) is not None:
                self.live_bytes -= nbytes

        return callback

    def _track(self, t: torch.Tensor) -> None:
        key = _storage_key(t)
        if key is None or key in self.known_keys or key in self.live:
            return
        storage = t.untyped_storage()
        nbytes = storage.nbytes()
        # The weak reference fires when the storage itself is freed, i.e. after its last view.
        self.live[key] = weakref.ref(storage, self._freed(key, nbytes))
        self.live_bytes += nbytes
        self.costs.peak_live_bytes = max(self.costs.peak_live_bytes, self.live_bytes)

    # -- dispatch --------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        flops = self.counter.get_total_flops() - before

        name, module = self.modules.innermost()
        attributes = self._dynamic_weight_keys(module)

        def is_weight(key: tuple[str, int] | None) -> bool:
            return key is not None and (key in self.weight_keys or key in attributes)

        tensors_in = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        tensors_out = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        in_keys = [_storage_key(t) for t in tensors_in]

        if flops:
            # Sparse MACs: dense MACs x density of the weight operand, the largest operand with
            # >= 2 dims living in a parameter or buffer (biases are 1-d). Products of two
            # activations (attention scores) have no weight operand and count as dense.
            candidates = [
                t for t, key in zip(tensors_in, in_keys) if is_weight(key) and t.dim() >= 2
            ]
            density = _density(max(candidates, key=lambda t: t.numel())) if candidates else 1.0
            macs = flops // 2
            self.costs.macs += macs
            self.costs.nonzero_macs += macs * density
            layer = self.costs.layers.setdefault(
                name, LayerCost(type(module).__name__ if module is not None else "")
            )
            layer.macs += macs
            layer.nonzero_macs += macs * density

        if not _is_view(func) and func not in _ALLOCATORS:
            read = sum(t.numel() for t, key in zip(tensors_in, in_keys) if not is_weight(key))
            written = sum(t.numel() for t in tensors_out)
            self.costs.activation_elements += read + written
        for t in tensors_out:
            self._track(t)
        return out


def _mha_fastpath(enabled: bool) -> contextlib.AbstractContextManager:
    """MultiheadAttention's fused fast path is one opaque op with no FLOP formula; switch it off
    while counting so attention decomposes into linear + scaled-dot-product ops."""
    backends = getattr(torch.backends, "mha", None)
    if backends is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def switch() -> Iterator[None]:
        previous = backends.get_fastpath_enabled()
        backends.set_fastpath_enabled(enabled)
        try:
            yield
        finally:
            backends.set_fastpath_enabled(previous)

    return switch()


def _resident(
    model: nn.Module, inputs: Any
) -> tuple[set[tuple[str, int]], set[tuple[str, int]], int]:
    """Storages of the parameters and buffers, of those plus the inputs, and their bytes."""
    weight_keys: set[tuple[str, int]] = set()
    nbytes = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = _storage_key(tensor)
        if key is not None and key not in weight_keys:
            weight_keys.add(key)
            nbytes += tensor.untyped_storage().nbytes()
    known_keys = set(weight_keys)
    for leaf in tree_leaves(inputs):
        if isinstance(leaf, torch.Tensor) and (key := _storage_key(leaf)) not in known_keys:
            if key is not None:
                known_keys.add(key)
                nbytes += leaf.untyped_storage().nbytes()
    return weight_keys, known_keys, nbytes


def resident_bytes(model: nn.Module, inputs: Any) -> int:
    """Bytes of the parameters, buffers and inputs (each storage once): alive throughout a pass."""
    return _resident(model, inputs)[2]


def count_costs(model: nn.Module, run: Callable[[], Any], inputs: Any) -> Costs:
    """Run `run()` once under the counting modes (caller provides eval/inference context)."""
    costs = Costs()
    weight_keys, known_keys, costs.baseline_bytes = _resident(model, inputs)

    # Parameters per layer, each shared parameter counted once, under its first owner.
    owners = dict(model.named_modules())
    for pname, param in effective_parameters(model):
        owner = pname.rpartition(".")[0]
        layer = costs.layers.setdefault(owner, LayerCost(type(owners[owner]).__name__))
        layer.params += param.numel()
        layer.nonzero += int(torch.count_nonzero(param))

    modules = _ModuleStack(model)
    counter = FlopCounterMode(display=False, custom_mapping=dict(EXTRA_FLOP_FORMULAS))
    counter.mod_tracker = _TotalOnly()  # type: ignore[assignment]
    mode = _CostMode(counter, modules, weight_keys, known_keys, costs)
    with _mha_fastpath(False), modules.active(), counter, mode:
        output = run()
    del output
    return costs


class _TotalOnly:
    """Stands in for FlopCounterMode's module tracker: every count goes to "Global", the total read
    here (layers are attributed by `_ModuleStack`). The tracker's autograd hooks would fail on a
    module input that requires grad under inference mode (a class token passed to a block)."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _TotalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None
