"""Perplexity of a causal language model on token batches."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.metrics._call import inference
from prunekit.train._eval import logits_of

LMForwardFn = Callable[[nn.Module, torch.Tensor], Any]


def _token_ids(batch: Any) -> torch.Tensor:
    # A batch is a LongTensor [B, T], or a tuple/list whose first element is one.
    ids = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise TypeError(
            "perplexity batches must be integer token-id tensors of shape [B, T] (or tuples "
            f"starting with one), got {type(ids).__name__}"
            + (f" of shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else "")
        )
    return ids


def _default_forward(model: nn.Module, ids: torch.Tensor) -> Any:
    # Hugging Face LMs build a key/value cache by default: useless here, and it costs memory.
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        return model(ids, use_cache=False)
    return model(ids)


def perplexity(
    model: nn.Module, batches: Iterable[Any], forward_fn: LMForwardFn | None = None
) -> float:
    """exp of the token-weighted mean next-token cross-entropy over ``batches``.

    Each batch is a LongTensor [B, T] of token ids; position t's logits are scored on token t+1,
    so a batch contributes B * (T - 1) predictions. The logits are ``forward_fn(model, ids)`` or
    ``model(ids)`` (a tensor [B, T, V], or an output with ``.logits`` / ``["logits"]``). Runs in
    eval mode without gradients; every module's train flag is restored.

    >>> import torch
    >>> class Uniform(torch.nn.Module):
    ...     def forward(self, ids):
    ...         return torch.zeros(*ids.shape, 50)
    >>> round(perplexity(Uniform(), [torch.randint(0, 50, (2, 9))]), 6)
    50.0
    """
    forward = forward_fn or _default_forward
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total, count = 0.0, 0
    with inference(model):
        for batch in batches:
            ids = _token_ids(batch).to(device)
            if ids.shape[1] < 2:
                continue  # one token: nothing to predict
            logits = logits_of(forward(model, ids))
            if logits.shape[:2] != ids.shape:
                raise ValueError(
                    f"logits of shape {tuple(logits.shape)} do not match token ids of shape "
                    f"{tuple(ids.shape)}: expected [B, T, V]"
                )
            pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
            total += F.cross_entropy(pred, ids[:, 1:].reshape(-1), reduction="sum").item()
            count += pred.shape[0]
    if count == 0:
        raise ValueError("no predictions to score: give at least one batch with T >= 2 tokens")
    return math.exp(total / count)
