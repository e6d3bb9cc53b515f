"""Cheap recovery after pruning: re-estimate BatchNorm running statistics on a few batches.

Removing channels changes what every later BatchNorm sees, so its stored mean and variance go
stale. Re-measuring them (no gradients, no optimiser) often recovers much of the lost accuracy.

>>> import prunekit as pk
>>> pk.prune(model, x, ratio=0.5)  # doctest: +SKIP
>>> pk.recalibrate_bn(model, calibration_batches, batches=50)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.train._eval import ForwardFn, default_forward, device_of, to_device

BatchNorm = nn.modules.batchnorm._BatchNorm


def recalibrate_bn(
    model: nn.Module,
    data: Iterable[Any],
    *,
    batches: int | None = 100,
    forward_fn: ForwardFn | None = None,
) -> nn.Module:
    """Reset and re-measure the running statistics of every BatchNorm of `model`, in place.

    Runs `model` under no_grad, with only its BatchNorms in train mode (dropout stays off), on up
    to `batches` batches of `data` (all of it when None): ``(inputs, targets)`` pairs or bare inputs, called with `forward_fn(model,
    inputs)` (default: ``model(inputs)``). Each BatchNorm averages its batches equally
    (momentum None) meanwhile; momenta and every module's train/eval mode are restored after.
    On failure the old statistics are put back. Returns `model`.
    """
    _check_data(data, batches)
    norms = tracked_norms(model)
    modes = {m: m.training for m in model.modules()}
    _check_mode_settable(model, bool(norms), modes)
    if not norms:
        warnings.warn("recalibrate_bn: the model has no BatchNorm; nothing to do", stacklevel=2)
        return model
    momenta = [m.momentum for m in norms]
    saved = [[b.clone() for b in m.buffers(recurse=False)] for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.eval()
        for m in norms:
            m.train()
        if _run(model, data, batches, forward_fn or default_forward) == 0:
            raise ValueError("recalibrate_bn: data yielded no batches; pass calibration batches")
    except BaseException:
        with torch.no_grad():
            for m, old in zip(norms, saved):
                for b, value in zip(m.buffers(recurse=False), old):
                    b.copy_(value)
        raise
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        _set_modes(modes)
    return model


def tracked_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorms of `model` that keep running statistics (what `recalibrate_bn` re-measures)."""
    return [m for m in model.modules() if isinstance(m, BatchNorm) and m.track_running_stats]


def _check_data(data: Any, batches: int | None, who: str = "recalibrate_bn") -> None:
    if data is None:
        raise ValueError(
            f"{who} needs data: pass an iterable of (inputs, targets) batches, e.g. "
            "a DataLoader over some training images"
        )
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{who}: data must be an iterable of batches (a DataLoader or a list of "
            f"(inputs, targets) pairs or of input tensors), not {type(data).__name__}; "
            "wrap a single tensor batch as [x]"
        )
    if batches is not None and batches < 1:
        raise ValueError(f"batches must be >= 1 (or None for all of data), got {batches}")


def _set_modes(modes: dict[nn.Module, bool]) -> None:
    for m, training in modes.items():
        m.training = training


def _check_mode_settable(model: nn.Module, has_norms: bool, modes: dict[nn.Module, bool]) -> None:
    """Exported graphs (torch.export) refuse train mode and keep BatchNorm as baked-in ops."""
    try:
        model.train()  # (an exported graph's module refuses)
        _set_modes(modes)
    except NotImplementedError:
        if has_norms or any(n.endswith("running_mean") for n, _ in model.named_buffers()):
            raise TypeError(
                "recalibrate_bn: this model is an exported graph (torch.export) whose BatchNorm "
                "layers are baked-in ops; recalibrate the eager model before exporting it"
            ) from None


def _run(model: nn.Module, data: Iterable[Any], batches: int | None, forward: ForwardFn) -> int:
    device, seen = device_of(model), 0
    with torch.no_grad():
        for batch in data:
            forward(model, to_device(_inputs_of(batch), device))
            seen += 1
            if batches is not None and seen >= batches:
                break
    return seen


def _inputs_of(batch: Any) -> Any:
    """The inputs of an ``(inputs, targets)`` pair; any other batch is taken as inputs."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    return batch
