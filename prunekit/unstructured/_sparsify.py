"""`sparsify`: score weights, allocate the sparsity over layers, select, and attach masks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.unstructured._importance import resolve_importance
from prunekit.unstructured._masks import attach_mask, check_shape, masks_of
from prunekit.unstructured._patterns import Pattern, expand_units, nm_keep, parse_pattern, unit_view
from prunekit.unstructured._report import SparsityReport, sparsity_report
from prunekit.unstructured._scopes import LayerUnits, scopes
from prunekit.unstructured._select import prune_lowest, prune_per_row
from prunekit.unstructured._targets import Target, find_targets, warn_shared, warn_untargeted

DEFAULT_IMPORTANCE = "magnitude"
DEFAULT_SCOPE = "global"


def _check_sparsity(sparsity: Any, pattern: Pattern) -> float:
    if pattern.kind == "nm":
        implied = 1 - pattern.n / pattern.m
        if sparsity is not None and not math.isclose(float(sparsity), implied, abs_tol=1e-9):
            raise ValueError(
                f"pattern {pattern} fixes the sparsity at {implied:g}; got sparsity={sparsity}. "
                "Omit sparsity= with an N:M pattern"
            )
        return implied
    if sparsity is None:
        raise ValueError("sparsity= is required: the final fraction of zeros, e.g. 0.9")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(
            f"sparsity must be in [0, 1) (the fraction of zeros), got {sparsity}; "
            "e.g. 0.9 keeps 10% of the weights"
        )
    return float(sparsity)


def _existing_pruned(target: Target) -> torch.Tensor:
    """Entries already masked out (all False when the weight has no mask yet)."""
    mask = masks_of(target.module).get(target.attr)
    weight = target.weight
    if mask is None:
        return torch.zeros_like(weight, dtype=torch.bool)
    check_shape(target.module, target.attr, mask, weight)
    return ~mask


def _checked_scores(scores: dict[str, torch.Tensor], targets: Sequence[Target]) -> None:
    for t in targets:
        s = scores.get(t.name)
        if s is None or tuple(s.shape) != tuple(t.weight.shape):
            got = "nothing" if s is None else f"shape {list(s.shape)}"
            raise ValueError(
                f"importance returned {got} for {t.name}; scores must be shaped like the "
                f"weight {list(t.weight.shape)}"
            )
        if torch.isnan(s).any():
            raise ValueError(f"importance scores of {t.name} contain NaN (are the weights NaN?)")


def _fitting(targets: Sequence[Target], pattern: Pattern) -> list[Target]:
    fit = [t for t in targets if pattern.fits(t.oriented(t.weight).shape)]
    skipped = [t.name for t in targets if t not in fit]
    if skipped:
        warnings.warn(
            f"pattern {pattern} needs {pattern.requirement()}; left dense: "
            f"{', '.join(skipped)} (pass ignore= to silence this)",
            stacklevel=3,
        )
    if not fit:
        raise ValueError(f"no targeted weight can hold pattern {pattern} ({pattern.requirement()})")
    return fit


def compute_masks(
    targets: Sequence[Target],
    scores: dict[str, torch.Tensor],
    sparsity: float,
    pattern: Pattern,
    scope: str,
    per_row: bool = False,
    signed: bool = False,
) -> dict[str, torch.Tensor]:
    """Keep-masks (True = kept) of `targets` for the given scores; nothing is modified."""
    # masks are chosen on [out, in] views (rows: outputs), and turned back for transposed weights
    pruned = {t.name: t.oriented(_existing_pruned(t)) for t in targets}
    oriented = {t.name: t.oriented(scores[t.name]) for t in targets}
    if pattern.kind == "nm":
        return {
            t.name: t.oriented(nm_keep(pattern, oriented[t.name], pruned[t.name])) for t in targets
        }
    layers = [
        LayerUnits(
            name=t.name,
            scores=unit_view(pattern, oriented[t.name].float()),
            forced=unit_view(pattern, pruned[t.name], reduce="all"),
            weight=t.oriented(t.weight),
            signed=signed,
        )
        for t in targets
    ]
    counts = scopes.get(scope)(layers, sparsity)
    select = prune_per_row if per_row else prune_lowest
    out = {}
    for t, layer, k in zip(targets, layers, counts):
        keep_units = ~select(layer.scores, layer.forced, k)
        shape = pruned[t.name].shape
        out[t.name] = t.oriented(expand_units(pattern, keep_units, shape) & ~pruned[t.name])
    return out


def sparsify(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    importance: Any = DEFAULT_IMPORTANCE,
    scope: str | None = None,
    pattern: str = "unstructured",
    data: Iterable[Any] | None = None,
    ignore: Sequence[str] | None = None,
) -> SparsityReport:
    """Zero the least important weights of every nn.Linear / nn.Conv{1,2,3}d (and the input
    projections of nn.MultiheadAttention) and keep them zero.

    `sparsity` is the final fraction of zeros in the targeted weights (calling again with a higher
    value prunes further and keeps the existing zeros). `importance`: "magnitude", "wanda" (needs
    `data`, compared within each output row), "movement" (a `Movement` object used as a fit
    callback, or `data` for a one-step estimate), or any object with
    ``scores(model, targets, data)``. `scope` allocates the sparsity over layers: "global",
    "local", "std", "lamp", "erk"; by default "local" for criteria compared within rows
    (wanda: as in its paper, every layer the same sparsity; one threshold over all layers would
    compare activation scales of different layers) and "global" for the others. `pattern`: "unstructured", "N:M" (e.g. "2:4", sparsity implied)
    or "blockRxC" (e.g. "block4x4"). `ignore`: module or parameter names/globs left dense.

    Each pruned weight gets a bool buffer ``weight_mask`` (True = kept) and a hook; see
    `prunekit.unstructured.KeepMasks` for fine-tuning and `remove_masks` to make it permanent.
    The model is modified in place only once everything is computed; errors leave it untouched.
    Returns the `SparsityReport` of the targeted weights.

    >>> import torch, prunekit as pk
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> pk.sparsify(model, sparsity=0.75).sparsity
    0.75
    >>> pk.sparsify(model, pattern="2:4").sparsity >= 0.75
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"sparsify expects an nn.Module, got {type(model).__name__}")
    pat = parse_pattern(pattern)
    level = _check_sparsity(sparsity, pat)
    imp = resolve_importance(importance)
    scope = scope or default_scope(imp)
    scopes.get(scope)  # validate the name even where the pattern does not use it
    targets = find_targets(model, ignore)
    if not targets:
        raise ValueError(
            "the model has no nn.Linear or nn.Conv{1,2,3}d weight to sparsify (or ignore= "
            "excludes them all)"
        )
    warn_untargeted(model, targets, ignore, "sparsify")
    if pat.kind != "unstructured":
        targets = _fitting(targets, pat)
    for t in targets:
        _existing_pruned(t)  # fail on stale masks before scoring
    scores = imp.scores(model, targets, data)
    _checked_scores(scores, targets)
    keeps = compute_masks(
        targets,
        scores,
        level,
        pat,
        scope,
        per_row=bool(getattr(imp, "per_row", False)),
        signed=bool(getattr(imp, "signed", False)),
    )
    _warn_emptied(targets, keeps, scope)
    for t in targets:
        attach_mask(t.module, t.attr, keeps[t.name])
    warn_shared(model, targets)
    return sparsity_report(model, ignore)


def default_scope(importance: Any) -> str:
    """ "local" for a criterion compared within output rows (wanda), else `DEFAULT_SCOPE`."""
    return "local" if getattr(resolve_importance(importance), "per_row", False) else DEFAULT_SCOPE


def _warn_emptied(targets: Sequence[Target], keeps: dict[str, torch.Tensor], scope: str) -> None:
    """A layer that keeps no weight outputs only its bias, whatever its input: the network is
    cut there. One threshold over all layers (scope "global", "std") can do that to a layer whose
    weights are small; say so rather than leave a silently broken model."""
    emptied = [t.name for t in targets if t.weight.numel() > 1 and not bool(keeps[t.name].any())]
    if emptied:
        warnings.warn(
            f"scope={scope!r} pruned every weight of {len(emptied)} layer(s) "
            f"({', '.join(emptied[:5])}{', ...' if len(emptied) > 5 else ''}): their outputs no "
            "longer depend on their inputs. Use scope='lamp' or 'erk' (every layer keeps "
            "weights), a lower sparsity, or ignore= for these layers",
            stacklevel=3,
        )
