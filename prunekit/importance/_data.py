"""Calibration batches for data-driven criteria: bounded iteration, inputs/targets, devices.

`data` is an iterable of ``(inputs, targets)`` batches (DESIGN.md §2). Activation criteria only read
the inputs; a bare tensor batch is accepted there as inputs without targets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

DEFAULT_MAX_BATCHES = 8


def take_batches(data: Iterable[Any], max_batches: int, name: str) -> list[Any]:
    """The first `max_batches` batches of `data` (a clear error when it yields none)."""
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"importance {name!r}: data must be an iterable of (inputs, targets) batches "
            f"(e.g. a DataLoader or a list of pairs), not {type(data).__name__}"
        )
    out = []
    for batch in data:
        out.append(batch)
        if len(out) >= max_batches:
            break
    if not out:
        raise ValueError(f"importance {name!r}: data yielded no batches")
    return out


def split_batch(batch: Any, name: str, need_targets: bool) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one batch; targets are None for a bare tensor batch."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, torch.Tensor) and not need_targets:
        return batch, None
    raise ValueError(
        f"importance {name!r}: each calibration batch must be an (inputs, targets) pair, got "
        f"{type(batch).__name__}"
        + (f" of length {len(batch)}" if hasattr(batch, "__len__") else "")
    )


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(obj: Any, device: torch.device) -> Any:
    return tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, obj)


def as_call(inputs: Any) -> tuple[tuple, dict]:
    """Positional and keyword inputs of a batch: a tensor, a tuple/list, or a dict of kwargs."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def leading_size(leaves: list[Any]) -> int | None:
    for v in leaves:
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    return None


def pooled_graph_inputs(
    inputs: list[Any], static_batch: int | None, chunk: int = 64
) -> list[tuple[tuple, dict]]:
    """Re-batch calibration inputs for the exported graph.

    The graph needs a batch of at least 2 (exported with a dynamic batch starting at 2) or exactly
    `static_batch` (models exported with static shapes). All samples are pooled along dim 0 and
    cut into chunks of `chunk` (dynamic) or `static_batch`; a chunk that would be too small is
    filled by cycling through the pool again (a duplicated sample weighs twice: the statistics
    are means, or sums whose common scale does not change any ranking).
    """
    calls = [as_call(x) for x in inputs]
    flat = [tree_flatten(c) for c in calls]
    spec = flat[0][1]
    if any(s != spec for _, s in flat):
        raise ValueError("calibration batches must all have the same structure of inputs")
    sizes = [leading_size(leaves) for leaves, _ in flat]
    if sizes[0] is None:
        return calls
    batched = [
        i
        for i, v in enumerate(flat[0][0])
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == sizes[0]
    ]
    pools = {i: torch.cat([leaves[i] for leaves, _ in flat]) for i in batched}
    total = sum(sizes)
    step = static_batch or max(2, min(chunk, total))
    if static_batch is None and total % step == 1:
        step += 1  # never leave a lone sample for the last chunk
    out = []
    for start in range(0, total, step):
        n = static_batch or max(2, min(step, total - start))
        idx = torch.arange(start, start + n) % total
        leaves = list(flat[0][0])
        for i, pool in pools.items():
            leaves[i] = pool.index_select(0, idx.to(pool.device))
        out.append(tree_unflatten(leaves, spec))
    return out
