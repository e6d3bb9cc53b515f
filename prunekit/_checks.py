"""Checks on the model a user hands over, with the fix in the message."""

from __future__ import annotations

from typing import Any

from torch import nn


def check_model(model: Any, caller: str) -> None:
    """TypeError / ValueError unless `model` is a module `caller` can work on: not a
    DataParallel / DistributedDataParallel wrapper, not on the meta device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{caller} expects a torch.nn.Module, not {type(model).__name__}")
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        raise TypeError(
            f"{caller}: this model is wrapped in {type(model).__name__}; pass the wrapped "
            "model (model.module) and wrap it again afterwards"
        )
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_meta for t in tensors):
        raise ValueError(
            f"{caller}: the model has tensors on the meta device (no values); materialise it "
            "first (model.to_empty(device='cpu'), then load its weights)"
        )
