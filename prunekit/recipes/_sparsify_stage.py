"""The unstructured stage of a recipe: `prunekit.sparsify` once, in rounds, or while fine-tuning.

The runner owns the stages, checkpoints and resume; this module only turns a `SparsifyConfig`
into calls of the unstructured API (kept apart so the runner stays one screen per stage).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.recipes._typed import RecipeError
from prunekit.recipes.recipe import SparsifyConfig


def check_names(cfg: SparsifyConfig, model: Any = None) -> None:
    """Reject an unknown scope or importance, and `ignore` patterns that match nothing in
    `model`, before any training (RecipeError names the key)."""
    from prunekit.unstructured import importances, scopes
    from prunekit.unstructured._targets import check_ignore

    if model is not None:
        try:
            check_ignore(model, list(cfg.ignore))
        except ValueError as err:
            raise RecipeError("sparsify.ignore", str(err)) from None
    for key, registry, value in (
        ("scope", scopes, cfg.scope),
        ("importance", importances, cfg.importance),
    ):
        try:
            registry.get(value)
        except ValueError as err:
            raise RecipeError(f"sparsify.{key}", str(err)) from None


def needs_data(cfg: SparsifyConfig) -> bool:
    return cfg.importance in ("wanda", "movement")


def _kwargs(cfg: SparsifyConfig, data: Any) -> dict[str, Any]:
    return dict(
        importance=cfg.importance,
        scope=cfg.scope,
        pattern=cfg.pattern,
        data=data if needs_data(cfg) else None,
        ignore=list(cfg.ignore),
    )


def sparsify_once(model: nn.Module, cfg: SparsifyConfig, data: Any, level: float | None) -> None:
    """Zero weights up to `level` (the recipe's sparsity by default) and install the masks."""
    from prunekit.unstructured import sparsify

    sparsify(model, cfg.sparsity if level is None else level, **_kwargs(cfg, data))


def round_levels(cfg: SparsifyConfig) -> list[float]:
    """The sparsity after each prune -> fine-tune round (one round unless iterative)."""
    from prunekit.unstructured import IterativeSchedule

    if cfg.schedule != "iterative":
        return [cfg.sparsity]  # type: ignore[list-item]  # None for N:M (implied)
    return IterativeSchedule(sparsity=cfg.sparsity, rounds=cfg.rounds).sparsities()


def finetune_callbacks(cfg: SparsifyConfig, data: Any) -> list[Any]:
    """Callbacks for the fine-tuning run: the gradual schedule, or keeping the existing zeros."""
    from prunekit.unstructured import GradualSchedule, KeepMasks

    if cfg.schedule == "gradual":
        return [GradualSchedule(sparsity=cfg.sparsity, every=cfg.every, **_kwargs(cfg, data))]
    return [KeepMasks()]


def summary(model: nn.Module, cfg: SparsifyConfig) -> dict[str, Any]:
    """What the report says about the stage: the settings and the sparsity reached per layer."""
    from prunekit.unstructured import sparsity_report

    report = sparsity_report(model, list(cfg.ignore) or None)
    return {
        "sparsity": report.sparsity,
        "target_sparsity": cfg.sparsity,
        "pattern": cfg.pattern,
        "importance": cfg.importance,
        "scope": cfg.scope,
        "schedule": cfg.schedule,
        "layers": {layer.name: layer.sparsity for layer in report.layers},
    }
