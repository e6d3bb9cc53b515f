"""Per-weight importance (higher = kept): `magnitude`, `wanda`, `movement`, and their registry.

name       data      score of weight W[o, i]                                  compared within
---------  --------  -------------------------------------------------------  -----------------
magnitude  no        |W|                                                      the allocation
wanda      yes       |W| * ||X_i||_2, X_i = input feature i over all tokens   each output row
movement   training  -Σ_t W * dL/dW accumulated over training steps           the allocation
                     (Sanh et al. 2020); from `data=` a one-step estimate

Wanda (Sun et al. 2023) compares weights within each output row: every row loses the same
fraction, the layer's share set by the scope. For a conv weight W[o, c, k...] the feature norm is
that of the input patch entry (c, k...) over all output positions (what im2col would multiply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.unstructured._inputs import InputRecorder, feature_norms_like
from prunekit.unstructured._registry import Registry
from prunekit.unstructured._targets import Target, find_targets

importances = Registry("unstructured importance")
DEFAULT_MAX_BATCHES = 8


class WeightImportance:
    """Base of per-weight criteria: `scores` returns one float tensor shaped like each weight.

    ``per_row``: weights are compared within output rows (Wanda). ``signed``: scores may be
    negative (movement), which rules out the `lamp` scope.
    """

    name = "custom"
    per_row = False
    signed = False

    def scores(
        self, model: nn.Module, targets: Sequence[Target], data: Iterable[Any] | None = None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@importances.register("magnitude")
class Magnitude(WeightImportance):
    """|W| (Han et al. 2015)."""

    name = "magnitude"

    def scores(self, model, targets, data=None):
        return {t.name: t.weight.detach().float().abs() for t in targets}


def _batches(data: Any, name: str, max_batches: int) -> list[Any]:
    from prunekit.importance._data import take_batches

    if data is None:
        raise ValueError(
            f"importance {name!r} needs calibration data: pass data=, an iterable of "
            "(inputs, targets) batches (e.g. a DataLoader or prunekit.data loaders)"
        )
    return take_batches(data, max_batches, name)


@importances.register("wanda")
class Wanda(WeightImportance):
    """|W| * ||X|| (Sun et al. 2023): needs ``data`` (reads at most `max_batches` batches)."""

    name = "wanda"
    per_row = True

    def __init__(
        self,
        max_batches: int = DEFAULT_MAX_BATCHES,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        self.max_batches = max_batches
        self.forward_fn = forward_fn

    def scores(self, model, targets, data=None):
        from prunekit.importance._data import device_of, split_batch, to_device
        from prunekit.train._eval import default_forward

        batches = _batches(data, self.name, self.max_batches)
        modes = {m: m.training for m in model.modules()}
        forward = self.forward_fn or default_forward
        recorder = InputRecorder(model, targets)
        try:
            model.eval()
            with torch.no_grad(), recorder:
                for batch in batches:
                    inputs, _ = split_batch(batch, self.name, need_targets=False)
                    forward(model, to_device(inputs, device_of(model)))
        finally:
            for m, training in modes.items():
                m.training = training
        sums = recorder.sums
        missing = [t.name for t in targets if t.name not in sums]
        if missing:
            raise ValueError(
                f"wanda: the calibration data never reached {', '.join(missing[:5])}; "
                "ignore= those layers or pass data that runs through them"
            )
        return {
            t.name: t.weight.detach().float().abs() * feature_norms_like(t, sums[t.name])
            for t in targets
        }


@importances.register("movement")
class Movement(WeightImportance):
    """Movement scores (Sanh et al. 2020): ``S = -Σ_t W * dL/dW``, accumulated during training.

    Use the same object as a `prunekit.train.fit` callback (it adds ``-W * grad`` after every
    optimizer step) and as ``importance=`` of `sparsify` or a schedule. Without accumulated scores,
    ``data=`` gives a one-step estimate (the gradient over at most `max_batches` batches).
    """

    name = "movement"
    signed = True

    def __init__(self, max_batches: int = DEFAULT_MAX_BATCHES, loss_fn: Any = None) -> None:
        self.max_batches = max_batches
        self.loss_fn = loss_fn
        self.accumulated: dict[str, torch.Tensor] = {}

    def on_step_end(self, state: Any) -> None:
        self.accumulate(state.model)

    def accumulate(self, model: nn.Module) -> None:
        """Add ``-W * W.grad`` of every targetable weight that has a gradient."""
        with torch.no_grad():
            for t in find_targets(model):
                w = t.weight
                if w.grad is None:
                    continue
                step = -(w.detach().float() * w.grad.float())
                prev = self.accumulated.get(t.name)
                self.accumulated[t.name] = step if prev is None else prev + step

    def state_dict(self) -> dict[str, Any]:
        return {"accumulated": dict(self.accumulated)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accumulated = dict(state["accumulated"])

    def scores(self, model, targets, data=None):
        if self.accumulated:
            missing = [t.name for t in targets if t.name not in self.accumulated]
            if missing:
                raise ValueError(
                    f"movement: no scores accumulated for {', '.join(missing[:5])}; train with "
                    "this Movement object among fit's callbacks, or ignore= those layers"
                )
            return {t.name: self.accumulated[t.name].clone() for t in targets}
        if data is None:
            raise ValueError(
                "importance 'movement' needs scores accumulated during training (pass a "
                "prunekit.unstructured.Movement() object to fit(callbacks=[...]) and as "
                "importance=) or data= for a one-step estimate"
            )
        return self._one_step(model, targets, _batches(data, self.name, self.max_batches))

    def _one_step(self, model, targets, batches):
        from prunekit.importance._data import device_of, split_batch, to_device
        from prunekit.train._eval import cross_entropy, default_forward, logits_of

        params = [t.weight for t in targets]
        flags = [p.requires_grad for p in params]
        modes = {m: m.training for m in model.modules()}
        grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        try:
            model.eval()
            for p in params:
                p.requires_grad_(True)
            for batch in batches:
                batch = to_device(batch, device_of(model))
                if self.loss_fn is not None:
                    loss = self.loss_fn(model, batch)
                else:
                    inputs, labels = split_batch(batch, self.name, need_targets=True)
                    loss = cross_entropy(logits_of(default_forward(model, inputs)), labels)
                # autograd.grad, not backward: no .grad is left on any of the user's parameters
                found = torch.autograd.grad(loss / len(batches), params, allow_unused=True)
                for total, g in zip(grads, found):
                    if g is not None:
                        total += g.float()
            return {t.name: -(t.weight.detach().float() * g) for t, g in zip(targets, grads)}
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            for m, training in modes.items():
                m.training = training


def resolve_importance(importance: Any) -> WeightImportance:
    """A registered name (``"magnitude"``) or an object with ``scores(model, targets, data)``."""
    if isinstance(importance, str):
        return importances.get(importance)()
    if callable(getattr(importance, "scores", None)):
        return importance
    raise TypeError(
        "importance must be a registered name "
        f"({', '.join(importances.list())}) or an object with .scores(model, targets, data), "
        f"got {type(importance).__name__}"
    )
