"""Recipes shipped with prunekit run end to end (on the small fixture data, shortened).

The default job runs in the README's quickstart and in tests/cli; the ResNet-20 distillation
recipe shares its stages with it (its sensitivity sweep and dense ResNet-20 make it slow here).
"""

from __future__ import annotations

import pytest
import torch

from prunekit.data import _speech as speech
from prunekit.recipes import builtin_recipes, load_recipe, run_recipe


def _fake_keywords(train: bool = True, settings=None, *, progress: bool = True):
    """Random log-mel-shaped clips in place of `keywords-synth` (48 train / 24 test, 12 labels)."""
    generator = torch.Generator().manual_seed(0 if train else 1)
    n = 48 if train else 24
    return torch.randn(n, 1, 40, 101, generator=generator), torch.arange(n) % 12


def _short(name: str):
    recipe = load_recipe(name)
    overrides = ["data.batch_size=16", "train.epochs=1", "eval.latency=false"]
    if recipe.finetune is not None:
        overrides.append("finetune.epochs=1")
    if recipe.sparsify is not None:
        overrides.append("sparsify.every=1")
    return recipe.with_overrides(overrides)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", sorted(set(builtin_recipes()) - {"default", "resnet20_4x_distill"})
)
def test_builtin_recipe_runs(env, name, monkeypatch):
    recipe = _short(name)
    if recipe.data.name == "keywords-synth":  # building the real clips takes minutes
        monkeypatch.setattr(speech, "keyword_tensors", _fake_keywords)
    report = run_recipe(recipe, out=f"runs/{name}", progress=False).report
    assert 0 <= report["pruned"]["accuracy"] <= 1
    if recipe.prune is not None:
        assert report["prune"]["verified"] is True
        kept = report["pruned"]["macs"] / report["dense"]["macs"]
        target = (recipe.prune.target or {}).get("macs")
        if target is not None:
            assert abs(kept - target) <= 0.02 * target
    if recipe.sparsify is not None:
        assert report["sparsify"]["sparsity"] == pytest.approx(recipe.sparsify.sparsity, abs=0.01)
    assert (env / "runs" / name / "report.html").is_file()
