"""Cheap recovery after pruning: refit each layer that lost input channels by least squares.

When a layer loses input channels, the rest of its weights were chosen for inputs that no longer
exist. Layer by layer, in the order the forward pass calls them, this refits such a layer so that,
on calibration batches, the pruned model's layer reproduces the *original* model's output for the
channels it kept (the idea of ThiNet, Luo et al. 2017, and channel pruning, He et al. 2017):

    W' = argmin_W ||X_p W^T - Y_o||^2 + lam ||W - W_0||^2

X_p are the pruned model's inputs to the layer (earlier layers already refitted, so their errors
are compensated too), Y_o the original layer's outputs, W_0 the pruned weights (the pull towards
them keeps underdetermined layers sensible). Convolutions are solved on unfolded patches. Only
`nn.Linear` and ungrouped `nn.Conv1d/2d/3d` layers are refitted; others are left untouched.

>>> import copy, prunekit as pk
>>> original = copy.deepcopy(model)  # doctest: +SKIP
>>> result = pk.prune(model, x, target={"macs": 0.5})  # doctest: +SKIP
>>> pk.reconstruct(model, original, result.plan, calibration_batches)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.structured.plan import Plan
from prunekit.structured.recovery import _check_data, _inputs_of
from prunekit.structured.surgery import dim_masks, keep_masks
from prunekit.train._eval import ForwardFn, default_forward, device_of, to_device

__all__ = ["reconstruct"]

Refittable = nn.Linear | nn.Conv2d


class _Captured(Exception):
    """Raised by a hook once it has what it needs, so the rest of the forward pass is skipped."""


def reconstruct(
    model: nn.Module,
    original: nn.Module,
    plan: Plan,
    data: Iterable[Any],
    *,
    batches: int | None = 16,
    damping: float = 0.05,
    forward_fn: ForwardFn | None = None,
) -> dict[str, float]:
    """Refit, in place, every layer of the pruned `model` whose input channels `plan` removed.

    `original` is the unpruned model (same module names; it is only read), `plan` the plan that
    turned it into `model` (`result.plan`), `data` calibration batches (``(inputs, targets)`` or
    bare inputs), of which the first `batches` are used. `damping` scales the pull towards the
    current weights, relative to the mean input energy. Both models run in eval mode under
    no_grad. Returns, per refitted layer, the relative output error after refitting (lower is
    better). Reconstruction changes what later BatchNorms see far less than pruning alone did, so
    `recalibrate_bn` afterwards is optional.
    """
    _check_data(data, batches, who="reconstruct")
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a prunekit Plan (result.plan), got {type(plan).__name__}")
    if damping <= 0:
        raise ValueError(f"damping must be > 0, got {damping}")
    calib = _take(data, batches)
    forward = forward_fn or default_forward
    masks = _parameter_masks(original, plan, calib[0])
    layers = [
        name
        for name in _call_order(model, calib[0], forward)
        if _lost_inputs(model, name, masks.get(f"{name}.weight"))
    ]
    modes = {m: m.training for m in (*model.modules(), *original.modules())}
    model.eval(), original.eval()
    errors: dict[str, float] = {}
    try:
        with torch.no_grad():
            for name in layers:
                refit = _refit(
                    model, original, name, masks[f"{name}.weight"], calib, forward, damping
                )
                errors[name] = refit
    finally:
        for m, training in modes.items():
            m.training = training
    return errors


def _take(data: Iterable[Any], batches: int | None) -> list[Any]:
    taken: list[Any] = []
    for batch in data:
        taken.append(_inputs_of(batch))
        if batches is not None and len(taken) >= batches:
            break
    if not taken:
        raise ValueError("reconstruct: data yielded no batches; pass calibration batches")
    return taken


def _parameter_masks(original: nn.Module, plan: Plan, inputs: Any) -> dict[str, list]:
    """Per parameter name of `original`: the kept mask of each dimension (None = untouched)."""
    from prunekit.graph import trace

    example = inputs if isinstance(inputs, tuple) else (inputs,)
    example = to_device(example, device_of(original))
    graph = trace(original, example)
    keep = keep_masks(graph, plan)
    return {
        fqn: dim_masks(graph, node, keep)
        for node, (fqn, _kind) in graph.tracer.placeholder_target.items()
    }


def _call_order(model: nn.Module, inputs: Any, forward: ForwardFn) -> list[str]:
    """Names of the refittable layers of `model` in the order one forward pass calls them."""
    order: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda _m, _a, name=name: order.append(name))
        for name, m in model.named_modules()
        if _refittable(m)
    ]
    try:
        with torch.no_grad():
            forward(model, to_device(inputs, device_of(model)))
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))  # a layer called twice is refitted once


def _refittable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return (
        isinstance(m, nn.Conv2d)
        and m.groups == 1
        and isinstance(m.padding, tuple)
        and m.padding_mode == "zeros"
    )


def _lost_inputs(model: nn.Module, name: str, masks: list | None) -> bool:
    if not masks or len(masks) < 2 or masks[1] is None:
        return False
    return not bool(masks[1].all()) and _refittable(model.get_submodule(name))


def _refit(
    model: nn.Module,
    original: nn.Module,
    name: str,
    masks: list,
    calib: list[Any],
    forward: ForwardFn,
    damping: float,
) -> float:
    layer: Refittable = model.get_submodule(name)  # type: ignore[assignment]
    source: Refittable = original.get_submodule(name)  # type: ignore[assignment]
    out_keep = masks[0]
    gram = cross = None
    target_energy = 0.0
    samples: list[tuple[torch.Tensor, torch.Tensor]] = []
    for inputs in calib:
        x = _layer_input(model, layer, inputs, forward)
        y = _layer_output(original, source, inputs, forward)
        if out_keep is not None:
            y = y.index_select(1, out_keep.nonzero().flatten().to(y.device))
        rows, targets = _rows(layer, x), _targets(y)
        rows = (
            torch.cat([rows, torch.ones_like(rows[:, :1])], 1) if layer.bias is not None else rows
        )
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        cross = rows.T @ targets if cross is None else cross + rows.T @ targets
        target_energy += float(targets.pow(2).sum())
        samples.append((rows, targets))
    current = _flat_weight(layer)
    lam = damping * (float(gram.diagonal().mean()) or 1.0)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + lam * eye, cross + lam * current.T)  # [d, out]
    _set_flat_weight(layer, solution.T)
    residual = sum(float((r @ solution - t).pow(2).sum()) for r, t in samples)
    return (residual / max(target_energy, 1e-30)) ** 0.5


def _rows(layer: Refittable, x: torch.Tensor) -> torch.Tensor:
    """Layer inputs as regression rows [samples, in_features (x kernel)], float64."""
    x = x.double()
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [N * positions, C * kh * kw]


def _targets(y: torch.Tensor) -> torch.Tensor:
    y = y.double()
    if y.dim() <= 2:
        return y.reshape(-1, y.shape[-1])
    return y.movedim(1, -1).reshape(-1, y.shape[1])  # channels last, positions in unfold order


def _flat_weight(layer: Refittable) -> torch.Tensor:
    w = layer.weight.detach().double().reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double()[:, None]], 1)
    return w


def _set_flat_weight(layer: Refittable, flat: torch.Tensor) -> None:
    weight = layer.weight
    if layer.bias is not None:
        layer.bias.copy_(flat[:, -1].to(layer.bias.dtype))
        flat = flat[:, :-1]
    weight.copy_(flat.reshape(weight.shape).to(weight.dtype))


def _capture(model: nn.Module, layer: nn.Module, inputs: Any, forward: ForwardFn, output: bool):
    seen: list[torch.Tensor] = []

    def hook(_m, args, out=None):
        seen.append(out if output else args[0])
        raise _Captured

    handle = layer.register_forward_hook(hook) if output else layer.register_forward_pre_hook(hook)
    try:
        forward(model, to_device(inputs, device_of(model)))
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"reconstruct: the forward pass never called layer {layer!r}")
    return seen[0]


def _layer_input(model, layer, inputs, forward) -> torch.Tensor:
    return _capture(model, layer, inputs, forward, output=False)


def _layer_output(model, layer, inputs, forward) -> torch.Tensor:
    return _capture(model, layer, inputs, forward, output=True)
