"""Shared plumbing for measurements: input normalisation, the forward call, inference context."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

ForwardFn = Callable[[nn.Module, tuple[Any, ...]], Any]


def as_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """`example_inputs` as a tuple (a lone tensor, or any non-tuple value, becomes a 1-tuple)."""
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def make_runner(
    model: nn.Module,
    inputs: tuple[Any, ...],
    kwargs: dict[str, Any] | None = None,
    forward_fn: ForwardFn | None = None,
) -> Callable[[], Any]:
    """A zero-argument callable running one inference: `forward_fn(model, inputs)` or a plain call."""
    kwargs = dict(kwargs or {})
    if forward_fn is not None:
        if kwargs:
            raise ValueError(
                "pass either forward_fn or example_kwargs, not both: forward_fn(model, inputs) "
                "must supply any keyword inputs itself"
            )
        return lambda: forward_fn(model, inputs)
    return lambda: model(*inputs, **kwargs)


def batch_size_of(inputs: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> int | None:
    """First dimension of the first tensor input (positional first, then keyword), if any."""
    for leaf in tree_leaves((inputs, kwargs or {})):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    return None


def device_and_dtype(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[str, str]:
    """Device and dtype of the model: first parameter (first floating one for dtype), else inputs."""
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    if not tensors:
        return "cpu", str(torch.get_default_dtype()).removeprefix("torch.")
    floating = [t for t in tensors if t.is_floating_point()]
    dtype = (floating or tensors)[0].dtype
    return str(tensors[0].device), str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and `torch.inference_mode` for the block; every module's train flag is restored.

    Eval is what gets deployed (dropout off, BatchNorm uses running statistics) and it keeps the
    measurement from updating any state of the model.
    """
    if isinstance(model, torch.jit.ScriptModule) and not hasattr(model, "training"):
        with torch.inference_mode():  # frozen TorchScript: no modes left, eval baked in
            yield
        return
    modes = [(m, m.training) for m in model.modules()]
    try:
        try:
            model.eval()
        except NotImplementedError:  # ExportedProgram.module(): its train/eval mode is baked in
            pass
        with torch.inference_mode():
            yield
    finally:
        for module, training in modes:
            module.training = training


def synchronize(device: str) -> None:
    """Wait for queued kernels on asynchronous devices (a no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def dense_equivalent(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with every `prunekit.sparse` layer (SparseLinear, SparseConv2d) swapped for the
    nn.Linear / nn.Conv2d it stands for, in place for the block (restored on exit, also on error);
    a model that is itself one such layer yields its dense twin instead.

    What those layers run (prunekit's C kernel, a CSR product) is invisible to
    `torch.utils.flop_counter`, and their weight lives in CSR buffers, not parameters; counted as
    their dense originals, a converted model has the parameters, nonzeros and (nonzero) MACs of the
    model it was converted from (DESIGN §5: sparse MACs = dense MACs x weight density).
    """
    from prunekit.sparse.layers import _SparseBase  # here: metrics need not import sparse

    if isinstance(model, _SparseBase):
        yield model.to_dense()
        return
    swaps = []  # (parent, attribute, sparse layer): a shared layer is swapped under every name
    for parent in model.modules():
        for attr, child in parent._modules.items():
            if isinstance(child, _SparseBase):
                swaps.append((parent, attr, child))
    dense = {id(c): c.to_dense() for _, _, c in swaps}
    try:
        for parent, attr, child in swaps:
            parent._modules[attr] = dense[id(child)]
        yield model
    finally:
        for parent, attr, child in swaps:
            parent._modules[attr] = child


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, values)` of each unique parameter as the forward uses them.

    `torch.nn.utils.prune` keeps the dense `<name>_orig` parameter and a `<name>_mask` buffer;
    their product is the weight that runs, so nonzeros are counted on it.
    """
    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        owner, _, attr = name.rpartition(".")
        values = param.detach()
        if attr.endswith("_orig"):
            mask = modules[owner]._buffers.get(attr.removesuffix("_orig") + "_mask")
            if mask is not None and mask.shape == values.shape:
                values = values * mask
        yield name, values
