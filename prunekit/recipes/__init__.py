"""Typed recipes (YAML is their serialised form) and the pipeline runner behind `prunekit run`.

>>> from prunekit.recipes import load_recipe, run_recipe
>>> recipe = load_recipe("default")                     # or a path to a .yaml file
>>> recipe.prune.target
{'macs': 0.5}
>>> result = run_recipe(recipe, out="runs/demo")         # doctest: +SKIP
"""

from prunekit.recipes._typed import RecipeError
from prunekit.recipes.recipe import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    PruneConfig,
    Recipe,
    TrainConfig,
    builtin_recipes,
    load_recipe,
)
from prunekit.recipes.runner import RunResult, run_recipe
from prunekit.recipes.tasks import prune_to_dir

__all__ = [
    "DataConfig",
    "DistillConfig",
    "EvalConfig",
    "FinetuneConfig",
    "ModelConfig",
    "PruneConfig",
    "Recipe",
    "RecipeError",
    "RunResult",
    "TrainConfig",
    "builtin_recipes",
    "load_recipe",
    "prune_to_dir",
    "run_recipe",
]
