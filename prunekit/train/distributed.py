"""Data-parallel fine-tuning with PyTorch's own engine (DistributedDataParallel).

Launch any prunekit run with `torchrun`; every process runs the same recipe on its shard of the
training data, gradients are averaged by DDP (gloo on CPU, NCCL on GPU), and only rank 0 writes:

    torchrun --nproc_per_node 2 -m prunekit run my_recipe.yaml

Pruning itself is deterministic and repeated on every rank with the same (unsharded)
calibration batches, so all ranks hold the same pruned model without exchanging it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["init_from_env", "rank", "world_size", "is_main", "wrap", "shutdown"]


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1).

    Returns True when this process is part of a multi-process run. Idempotent.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def wrap(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel when running multi-process, else `model` itself."""
    if not active():
        return model
    if not any(p.requires_grad for p in model.parameters()):
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, once every rank is here: a rank that tore its gloo connections
    down while another still held them (rank 0 saving its result) could abort at exit
    ("terminate called without an active exception", exit code -6) and fail the torchrun job."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def first(value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. a run directory chosen from the clock)."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
