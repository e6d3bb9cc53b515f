"""Deep copies of user models that also work when a module holds a tensor computed with grad.

`copy.deepcopy` refuses tensors that are not graph leaves ("Only Tensors created explicitly by
the user support the deepcopy protocol"). Models keep such tensors as plain attributes: the
legacy `torch.nn.utils.weight_norm` recomputes `module.weight` before every forward, and
timm's EfficientFormer caches its attention biases after a forward in eval mode. They are
copied detached: they are recomputed from the parameters anyway.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def deep_copy(model: M, memo: dict[int, Any] | None = None) -> M:
    """`copy.deepcopy(model, memo)`, with the non-leaf tensors its modules hold copied detached."""
    memo = {} if memo is None else memo
    for module in model.modules():
        for value in vars(module).values():
            for t in value.values() if isinstance(value, dict) else [value]:
                if isinstance(t, torch.Tensor) and not t.is_leaf and id(t) not in memo:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)
