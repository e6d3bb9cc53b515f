"""Gradient criteria: first-order Taylor (`taylor`) and the diagonal-Fisher OBD (`hessian`).

Both run the user's eager model on up to `max_batches` calibration batches and take
``torch.autograd.grad`` of `loss_fn(model, batch)` with respect to the parameters. Gradients
are never written to ``.grad``; the model runs in eval mode (BatchNorm running statistics and
dropout untouched) and its training flags and ``requires_grad`` flags are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit.importance._data import (
    DEFAULT_MAX_BATCHES,
    device_of,
    split_batch,
    take_batches,
    to_device,
)
from prunekit.importance.base import Importance, group_reduce
from prunekit.importance.registry import register
from prunekit.train._eval import logits_of

LossFn = Callable[[nn.Module, Any], torch.Tensor]
ForwardFn = Callable[[nn.Module, Any], Any]


def default_loss(forward_fn: ForwardFn | None = None, name: str = "loss") -> LossFn:
    """Cross-entropy of `forward_fn(model, inputs)` (default: a plain call) against the targets."""
    from prunekit.train import cross_entropy, default_forward

    forward = forward_fn or default_forward

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = split_batch(batch, name, need_targets=True)
        return cross_entropy(logits_of(forward(model, inputs)), targets)

    return loss


def batch_gradients(
    model: nn.Module,
    batches: list[Any],
    loss_fn: LossFn,
    name: str,
    *,
    square: bool,
) -> dict[str, torch.Tensor]:
    """FQN -> mean over batches of ∂L_b/∂w (``square=False``) or of (∂L_b/∂w)² (``square=True``).

    L_b is the loss of batch b as `loss_fn` returns it (a mean over the batch by default).
    Parameters the loss does not reach get zeros. Tied parameters appear under every name.
    """
    named = list(model.named_parameters(remove_duplicate=False))
    unique: dict[int, nn.Parameter] = {}
    for _, p in named:
        unique.setdefault(id(p), p)
    params = list(unique.values())
    modes = {m: m.training for m in model.modules()}
    flags = {id(p): p.requires_grad for p in params}
    sums = {id(p): torch.zeros_like(p, dtype=torch.float32) for p in params}
    device = device_of(model)
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                loss = loss_fn(model, to_device(batch, device))
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ValueError(
                        f"importance {name!r}: loss_fn must return a scalar tensor, got "
                        f"{type(loss).__name__}"
                        + (
                            f" of shape {tuple(loss.shape)}"
                            if isinstance(loss, torch.Tensor)
                            else ""
                        )
                    )
                if not loss.requires_grad:
                    raise ValueError(
                        f"importance {name!r}: the loss does not depend on the parameters "
                        "(was it computed under torch.no_grad()?)"
                    )
                grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
                for p, g in zip(params, grads):
                    if g is not None:
                        g = g.detach().float()
                        sums[id(p)] += g * g if square else g
    finally:
        for m, training in modes.items():
            m.training = training
        for p in params:
            p.requires_grad_(flags[id(p)])
    n = len(batches)
    return {fqn: sums[id(p)] / n for fqn, p in named}


class _GradientImportance(Importance):
    requires_data = True

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        forward_fn: ForwardFn | None = None,
        max_batches: int = DEFAULT_MAX_BATCHES,
    ) -> None:
        if loss_fn is not None and forward_fn is not None:
            raise ValueError("pass loss_fn or forward_fn, not both (loss_fn does its own forward)")
        self.loss_fn = loss_fn
        self.forward_fn = forward_fn
        self.max_batches = max_batches

    def _gradients(self, graph, data, square: bool) -> dict[str, torch.Tensor]:
        batches = take_batches(data, self.max_batches, self.name)
        loss_fn = self.loss_fn or default_loss(self.forward_fn, self.name)
        return batch_gradients(graph.model, batches, loss_fn, self.name, square=square)


@register("taylor")
class Taylor(_GradientImportance):
    """First-order Taylor, group form (Molchanov et al. 2019): ``|Σ_slices Σ w · ḡ|`` per channel.

    ḡ = ∂L_b/∂w averaged over the calibration batches (L_b: the batch's mean loss). The signed
    products w·ḡ of every parameter slice coupled to a channel are summed, then the absolute value
    taken: the first-order estimate of the loss change when the whole channel is zeroed.
    Unnormalised (units of the loss); global scope divides by the group mean.
    """

    name = "taylor"

    def group_scores(self, graph, groups, data=None, **kw):
        grads = self._gradients(graph, data, square=False)
        params = dict(graph.model.named_parameters(remove_duplicate=False))
        products = {n: params[n].detach().float() * g for n, g in grads.items()}
        memo: dict = {}
        return {
            g.key: group_reduce(graph, g, "w*g", lambda t: t, tensors=products, cache=memo).abs()
            for g in groups
        }


@register("hessian")
class Hessian(_GradientImportance):
    """Optimal Brain Damage with the diagonal empirical Fisher for the Hessian:
    ``½ Σ_slices Σ ĝ² · w²`` per channel, ĝ² = (∂L_b/∂w)² averaged over the calibration batches.

    The estimated loss increase when the channel's weights are removed (interactions between
    weights ignored, as in OBD). Unnormalised; global scope divides by the group mean.
    """

    name = "hessian"

    def group_scores(self, graph, groups, data=None, **kw):
        fisher = self._gradients(graph, data, square=True)
        params = dict(graph.model.named_parameters(remove_duplicate=False))
        saliency = {n: 0.5 * f * params[n].detach().float() ** 2 for n, f in fisher.items()}
        memo: dict = {}
        return {
            g.key: group_reduce(graph, g, "g2w2", lambda t: t, tensors=saliency, cache=memo)
            for g in groups
        }
