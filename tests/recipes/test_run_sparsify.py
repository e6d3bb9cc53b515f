"""Recipes with an unstructured stage: one-shot, iterative and gradual sparsity, and resume."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from prunekit.cli.main import main
from prunekit.io import read_metadata
from prunekit.recipes import Recipe, RecipeError, run_recipe

SPARSE = """\
name: sparse
seed: 0
model: {spec: lenet300}
data: {name: fashion-mnist, batch_size: 16}
train: {epochs: 1, lr: 0.05}
prune: null
sparsify: {sparsity: 0.8}
finetune: {epochs: 1, lr: 0.01}
eval: {latency: false}
"""


def _recipe(*overrides: str) -> Recipe:
    return Recipe.from_yaml(SPARSE).with_overrides(list(overrides))


def _zero_fraction(model) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@pytest.mark.slow
def test_one_shot_sparsity_survives_fine_tuning_and_saving(env):
    import prunekit

    result = run_recipe(_recipe(), out="runs/s", progress=False)
    report = result.report
    assert report["sparsify"]["sparsity"] == pytest.approx(0.8, abs=0.005)
    assert len(report["sparsify"]["layers"]) == 3  # the three Linear weights of LeNet-300-100
    assert report["pruned"]["nonzero_params"] < 0.3 * report["dense"]["params"]
    model = prunekit.load(result.run_dir)
    assert _zero_fraction(model) == pytest.approx(0.8, abs=0.005)  # fine-tuning kept the zeros
    assert prunekit.unstructured.masks_of(model)  # and the masks came back with the model
    assert report["pruned"]["size_bytes"] == (result.run_dir / "model.safetensors").stat().st_size
    html = (result.run_dir / "report.html").read_text()
    assert "<h2>Sparsity</h2>" in html and "sparsity: 80.0%" in html


def test_prune_summary_size_is_the_size_of_the_saved_file(tmp_path):
    """The masks are saved with a sparsified model: the summary's size counts them too (it
    reported the masks-free deployed copy, a quarter short of the file for LeNet-300-100)."""
    from prunekit.recipes import prune_to_dir

    summary = prune_to_dir("lenet300", out=tmp_path / "s", sparsity=0.9, progress=False)
    on_disk = (tmp_path / "s" / "model.safetensors").stat().st_size
    assert summary["after"]["size_bytes"] == on_disk
    assert summary["after"]["nonzero_params"] < 0.11 * summary["after"]["params"]  # deployed
    saved = read_metadata(tmp_path / "s")["metadata"]["prune"]["after"]
    assert saved["size_bytes"] == on_disk


@pytest.mark.slow
def test_iterative_rounds_raise_the_sparsity_step_by_step(env):
    recipe = _recipe("sparsify.schedule=iterative", "sparsify.rounds=2", "sparsify.sparsity=0.9")
    result = run_recipe(recipe, out="runs/i", progress=False)
    state = json.loads((result.run_dir / "state.json").read_text())["stages"]
    first, second = state["sparsify_1"]["sparsity"], state["sparsify_2"]["sparsity"]
    assert first == pytest.approx(1 - 0.1**0.5, abs=0.01)  # geometric: same fraction per round
    assert second == pytest.approx(0.9, abs=0.005)
    assert {"finetune round 1", "finetune round 2"} <= set(result.report["history"])
    assert result.report["sparsify"]["sparsity"] == pytest.approx(0.9, abs=0.005)


class _InterruptAt:
    """Deliver a real SIGINT (Ctrl-C) to this process after `step` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_gradual_run_interrupted_mid_fine_tuning_resumes_to_the_same_model(env, monkeypatch):
    import prunekit
    import prunekit.train

    # 4 steps per epoch; prune at every step up to 75% of the 8 steps, then keep the masks.
    recipe = _recipe("sparsify.schedule=gradual", "sparsify.every=1", "finetune.epochs=2")
    straight = run_recipe(recipe, out="runs/a", progress=False)

    original = prunekit.train.fit

    def interrupted_fit(model, data, **kwargs):
        if kwargs.get("callbacks"):  # the fine-tuning: Ctrl-C in the middle of the ramp
            kwargs["callbacks"] = [*kwargs["callbacks"], _InterruptAt(3)]
        return original(model, data, **kwargs)

    monkeypatch.setattr(prunekit.train, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, out="runs/b", progress=False)
    assert (env / "runs/b/checkpoints/finetune.pt").is_file()
    assert not (env / "runs/b/report.json").exists()
    monkeypatch.setattr(prunekit.train, "fit", original)
    resumed = run_recipe(None, resume="runs/b", progress=False)

    for key in ("accuracy", "loss", "nonzero_params"):
        assert resumed.report["pruned"][key] == straight.report["pruned"][key]
    a, b = prunekit.load(straight.run_dir), prunekit.load(resumed.run_dir)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert resumed.report["sparsify"]["sparsity"] == pytest.approx(0.8, abs=0.005)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["sparsify.pattern=2:4"], "sparsify.sparsity"),  # N:M fixes the sparsity
        (["sparsify.sparsity=1.5"], "sparsify.sparsity"),
        (["sparsify.pattern=2of4"], "sparsify.pattern"),
        (["sparsify.schedule=gradual", "finetune="], "sparsify.schedule"),
        (["sparsify.rounds=0"], "sparsify.rounds"),
    ],
)
def test_bad_sparsify_sections_name_the_key(overrides, key):
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        _recipe(*overrides)


def test_n_m_pattern_without_sparsity_is_accepted():
    recipe = _recipe("sparsify.sparsity=", "sparsify.pattern=2:4")
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("sparsify.scope=globl", ["sparsify.scope", "global"]),
        ("sparsify.ignore=[nosuch]", ["sparsify.ignore", "nosuch"]),
        ("finetune.optimizer=adam", ["finetune.optimizer", "adamw"]),
        ("train.schedule=bogus", ["train.schedule", "onecycle"]),
    ],
)
def test_bad_names_exit_2_before_training(env, capsys, assignment, expected):
    (env / "sparse.yaml").write_text(SPARSE)
    argv = ["run", "sparse.yaml", "--set", assignment, "--out", "runs/x", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(word in err[0] for word in expected)
    assert not (env / "runs").exists()


def test_recipe_optimizers_and_schedules_are_the_training_loops():
    from typing import get_args

    from prunekit.recipes.recipe import Optimizer, Schedule
    from prunekit.train import _loop

    assert set(get_args(Optimizer)) == set(_loop.OPTIMIZERS)
    assert set(get_args(Schedule)) == set(_loop.SCHEDULES)
