"""Stand-in calibration data for tests and smoke runs of data-driven criteria.

Not for real pruning: random inputs say little about which channels matter on real data.

>>> import torch, prunekit as pk
>>> from prunekit.importance.testing import calibration_batches
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
>>> x = torch.randn(2, 4)
>>> r = pk.prune(model, x, ratio=0.5, importance="taylor", data=calibration_batches(model, x))
>>> model[0].out_features
4
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.importance._data import as_call
from prunekit.train._eval import logits_of


def _like(t: Any, gen: torch.Generator) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    if t.is_floating_point():
        return torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)
    if t.dtype == torch.bool or t.numel() == 0:
        return t.clone()
    low, high = int(t.min()), int(t.max()) + 1  # stay within the example's range (token ids)
    return torch.randint(low, high, t.shape, generator=gen, dtype=t.dtype).to(t.device)


def calibration_batches(
    model: nn.Module, example_inputs: Any, *, batches: int = 2, seed: int = 0
) -> list[tuple[Any, torch.Tensor]]:
    """`batches` seeded ``(inputs, targets)`` pairs shaped like `example_inputs`.

    Float inputs are standard normal, integer inputs (token ids) uniform over the example's own
    range; targets are the model's own predictions (argmax over the output's last dim, computed in
    eval mode; the model's modes are restored), so the default cross-entropy loss applies.
    """
    gen = torch.Generator().manual_seed(seed)
    args, kwargs = as_call(example_inputs)
    modes = {m: m.training for m in model.modules()}
    out = []
    try:
        model.eval()
        for _ in range(batches):
            a = tuple(_like(v, gen) for v in args)
            k = {name: _like(v, gen) for name, v in kwargs.items()}
            with torch.no_grad():
                logits = logits_of(model(*a, **k))
            inputs: Any = k if kwargs else (a[0] if len(a) == 1 else a)
            out.append((inputs, logits.argmax(-1)))
    finally:
        for m, training in modes.items():
            m.training = training
    return out
