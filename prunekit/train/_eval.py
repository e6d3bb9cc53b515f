"""Default forward / loss conventions and :func:`evaluate`."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[nn.Module, Any], torch.Tensor]
ForwardFn = Callable[[nn.Module, Any], torch.Tensor]


def default_forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """A plain call: ``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict (as
    Hugging Face models take them), or ``model(x)`` for a dict whose keys are not the model's
    keyword arguments (a model taking one dict)."""
    if isinstance(inputs, dict):
        return model(**inputs) if _takes_keywords(model, inputs) else model(inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _takes_keywords(model: nn.Module, inputs: dict) -> bool:
    """Whether `model.forward` (of the wrapped model, under DDP) accepts the dict's keys."""
    wrapped = isinstance(model, nn.parallel.DistributedDataParallel)
    forward = (model.module if wrapped else model).forward
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # no signature to read: the Hugging Face convention
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(key in params for key in inputs)


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits tensor of a model output (a tensor, an object with ``.logits``, a dict with
    ``"logits"``, or a tuple)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and "logits" in outputs:
        return outputs["logits"]
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(
        f"model returned {type(outputs).__name__}; pass forward_fn= returning a logits tensor "
        "or loss_fn= returning the loss"
    )


def _classes_last(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    # [N, C] with [N], or [N, T, V] with [N, T]: classes on the last dim (else on dim 1,
    # as in segmentation's [N, C, H, W] with [N, H, W]).
    return logits.dim() == targets.dim() + 1 and logits.shape[:-1] == targets.shape


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy, ignoring targets of -100 (the Hugging Face padding convention)."""
    if _classes_last(logits, targets):
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def count_correct(logits: torch.Tensor, targets: Any) -> tuple[int, int] | None:
    """``(correct, counted)`` for class-index targets, or None when accuracy does not apply."""
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
        return None
    if _classes_last(logits, targets):
        pred = logits.argmax(-1)
    elif logits.dim() == targets.dim() + 1 and logits.shape[2:] == targets.shape[1:]:
        pred = logits.argmax(1)
    else:
        return None
    valid = targets != -100
    return int(((pred == targets) & valid).sum()), int(valid.sum())


def batch_size_of(inputs: Any) -> int:
    """The leading dimension of the first tensor found in ``inputs``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    values = inputs.values() if isinstance(inputs, dict) else inputs
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    return 1


def to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors of a (nested) batch to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def set_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, tolerating exported-graph modules (their mode is baked in)."""
    try:
        model.train(training)
    except NotImplementedError:
        pass


def evaluate(
    model: nn.Module,
    data: Iterable[Any],
    *,
    loss_fn: LossFn | None = None,
    forward_fn: ForwardFn | None = None,
) -> dict[str, Any]:
    """Accuracy (0..1), mean loss and example count of ``model`` over ``(inputs, targets)`` batches.

    Runs in eval mode under ``torch.inference_mode`` and restores the model's previous mode.
    With a custom ``loss_fn`` and no ``forward_fn``, accuracy is not measured (NaN).

    >>> from prunekit.data import loaders
    >>> from prunekit.models import build_model
    >>> _, test = loaders("digits")
    >>> evaluate(build_model("lenet300", image_size=8), test)["n"]
    359
    """
    was_training = model.training
    set_mode(model, False)
    device = device_of(model)
    loss_sum, correct, counted, n = 0.0, 0, 0, 0
    want_outputs = forward_fn is not None or loss_fn is None
    forward = forward_fn or default_forward
    try:
        with torch.inference_mode():
            for batch in data:
                batch = to_device(batch, device)
                inputs, targets = batch[0], batch[1]
                size = batch_size_of(inputs)
                if want_outputs:
                    logits = logits_of(forward(model, inputs))
                    hits = count_correct(logits, targets)
                    if hits is not None:
                        correct, counted = correct + hits[0], counted + hits[1]
                loss = loss_fn(model, batch) if loss_fn else cross_entropy(logits, targets)
                loss_sum += float(loss) * size
                n += size
    finally:
        set_mode(model, was_training)
    return {
        "accuracy": correct / counted if counted else math.nan,
        "loss": loss_sum / n if n else math.nan,
        "n": n,
    }
