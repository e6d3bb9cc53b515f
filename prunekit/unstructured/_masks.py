"""Masks that keep pruned weights at exactly zero.

A mask is a bool buffer ``<attr>_mask`` registered on the module next to its weight (True = kept),
so `copy.deepcopy`, `state_dict` and `prunekit.save` carry it. Zeros are enforced by:

- a forward-pre-hook object (`MaskHook`) that reads the module's *current* buffer: while training
  or with grad enabled it re-zeroes pruned entries that an optimizer moved (only when there are
  any, so gradient accumulation over several forwards is not disturbed) and makes sure the weight's
  gradient is masked (a tensor hook, registered again after a deep copy, which does not copy
  tensor hooks). In eval mode under `torch.no_grad()` it does nothing: inference pays nothing.
  It also does nothing while a model is traced or exported (the weights already hold the zeros).
- `KeepMasks`, a `prunekit.train.fit` callback that re-applies the masks after every optimizer step
  and zeroes the pruned entries of the optimizer state (momentum, Adam moments).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

MASK_SUFFIX = "_mask"


def _tracing() -> bool:
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def _plain(tensor: torch.Tensor) -> bool:
    """A real tensor holding data (not meta, not a fake tensor of a tracer)."""
    from torch._subclasses.fake_tensor import is_fake

    return not tensor.is_meta and not is_fake(tensor)


class _GradMask:
    """Tensor hook: zero the gradient of pruned entries (reads the module's current mask)."""

    def __init__(self, module: nn.Module, mask_name: str) -> None:
        self.module = weakref.ref(module)
        self.mask_name = mask_name

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        module = self.module()
        mask = None if module is None else module._buffers.get(self.mask_name)
        if mask is None or mask.shape != grad.shape:
            return grad
        return grad.masked_fill(~mask, 0)


class MaskHook:
    """Forward-pre-hook keeping ``module.<attr>`` zero where ``module.<attr>_mask`` is False."""

    def __init__(self, attr: str = "weight") -> None:
        self.attr = attr
        self._hooked: Any = None  # weakref to the parameter whose gradient is masked
        self._handle: Any = None

    @property
    def mask_name(self) -> str:
        return self.attr + MASK_SUFFIX

    def __deepcopy__(self, memo: dict[int, Any]) -> MaskHook:
        return MaskHook(self.attr)  # the copy hooks its own parameter on first use

    def __getstate__(self) -> dict[str, Any]:
        return {"attr": self.attr}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["attr"])

    def __call__(self, module: nn.Module, args: Any) -> None:
        if not (module.training or torch.is_grad_enabled()) or _tracing():
            return None
        mask = module._buffers.get(self.mask_name)
        weight = getattr(module, self.attr, None)
        if mask is None or not isinstance(weight, torch.Tensor) or not _plain(weight):
            return None
        check_shape(module, self.attr, mask, weight)
        if weight.requires_grad and (self._hooked is None or self._hooked() is not weight):
            self._handle = weight.register_hook(_GradMask(module, self.mask_name))
            self._hooked = weakref.ref(weight)
        with torch.no_grad():
            if weight.masked_fill(mask, 0).any():
                weight.masked_fill_(~mask, 0)
        return None

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = self._hooked = None


def check_shape(module: nn.Module, attr: str, mask: torch.Tensor, weight: torch.Tensor) -> None:
    if mask.shape != weight.shape:
        raise ValueError(
            f"{type(module).__name__}.{attr} has shape {list(weight.shape)} but its mask "
            f"{list(mask.shape)}: the layer was resized after sparsify. Call "
            "prunekit.unstructured.remove_masks(model) before structured pruning, then sparsify"
        )


def _hooks_of(module: nn.Module, attr: str) -> list[int]:
    return [
        key
        for key, hook in module._forward_pre_hooks.items()
        if isinstance(hook, MaskHook) and hook.attr == attr
    ]


def attach_mask(module: nn.Module, attr: str, mask: torch.Tensor) -> None:
    """Set (or replace) the mask of ``module.<attr>``, zero the pruned entries, hook the module."""
    weight = getattr(module, attr)
    mask = mask.to(device=weight.device, dtype=torch.bool)
    check_shape(module, attr, mask, weight)
    name = attr + MASK_SUFFIX
    if name in module._buffers:
        module._buffers[name] = mask
    else:
        module.register_buffer(name, mask)
    if not _hooks_of(module, attr):
        module.register_forward_pre_hook(MaskHook(attr))
    with torch.no_grad():
        weight.masked_fill_(~mask, 0)


def masked_parameters(model: nn.Module) -> list[tuple[str, nn.Module, str, torch.Tensor]]:
    """``(param name, module, attr, mask)`` for every masked parameter of `model`."""
    out = []
    for module_name, module in model.named_modules():
        for key, buf in module._buffers.items():
            if buf is None or not key.endswith(MASK_SUFFIX) or buf.dtype != torch.bool:
                continue
            attr = key[: -len(MASK_SUFFIX)]
            if not _hooks_of(module, attr):
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            out.append((name, module, attr, buf))
    return out


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` (True = kept) of every masked weight, e.g.
    ``{"fc1.weight": tensor([[True, False, ...]])}``. The tensors are the live buffers."""
    return {name: mask for name, _, _, mask in masked_parameters(model)}


def apply_masks(model: nn.Module) -> None:
    """Zero every masked weight where its mask is False (in place, no autograd)."""
    with torch.no_grad():
        for _, module, attr, mask in masked_parameters(model):
            weight = getattr(module, attr)
            check_shape(module, attr, mask, weight)
            weight.masked_fill_(~mask, 0)


def zero_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Zero the pruned entries of every per-weight optimizer state tensor (momentum buffers,
    Adam's first and second moments...), so no stale state moves a pruned weight again."""
    state = getattr(optimizer, "state", None)
    if not state:
        return
    with torch.no_grad():
        for _, module, attr, mask in masked_parameters(model):
            entry = state.get(getattr(module, attr))
            if not entry:
                continue
            for value in entry.values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.masked_fill_(~mask, 0)


def remove_masks(model: nn.Module) -> list[str]:
    """Make pruning permanent: zero the pruned weights one last time, then drop the mask buffers
    and hooks. The zeros stay in the dense weights. Returns the names of the weights unmasked."""
    apply_masks(model)
    names = []
    for name, module, attr, _ in masked_parameters(model):
        for key in _hooks_of(module, attr):
            module._forward_pre_hooks.pop(key).detach()
        del module._buffers[attr + MASK_SUFFIX]
        names.append(name)
    return names


def restore_masks(model: nn.Module, names: list[str]) -> None:
    """Re-attach all-True masks to the named weights (``"fc1.weight"``), so that a state dict
    holding their ``weight_mask`` buffers loads strictly (used by `prunekit.load`)."""
    for name in names:
        module_name, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError as e:
            raise ValueError(f"masked weight {name!r} has no module in the rebuilt model") from e
        weight = getattr(module, attr, None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"masked weight {name!r} is not a tensor of the rebuilt model")
        attach_mask(module, attr, torch.ones_like(weight, dtype=torch.bool))


class KeepMasks:
    """`prunekit.train.fit` callback: after every optimizer step, re-zero pruned weights and the
    pruned entries of the optimizer state (SGD momentum, Adam moments).

    >>> fit(model, train, callbacks=[KeepMasks()])  # doctest: +SKIP
    """

    def on_train_begin(self, state: Any) -> None:
        self._keep(state)

    def on_step_end(self, state: Any) -> None:
        self._keep(state)

    def _keep(self, state: Any) -> None:
        apply_masks(state.model)
        if state.optimizer is not None:
            zero_optimizer_state(state.model, state.optimizer)
