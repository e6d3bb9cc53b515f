"""End to end: `prunekit run` of a tiny recipe on the fake Fashion-MNIST fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunekit.cli.main import main
from prunekit.recipes import Recipe, load_recipe, run_recipe

TINY = """\
name: tiny
seed: 0
model: {spec: lenet5}
data: {name: fashion-mnist, batch_size: 16}
train: {epochs: 1, lr: 0.05}
prune: {ratio: 0.5}
finetune: {epochs: 1, lr: 0.01}
eval: {latency: false}
"""


@pytest.fixture
def env(env):
    """The shared scratch directory (tests/recipes/conftest.py), holding the tiny recipe."""
    (env / "tiny.yaml").write_text(TINY)
    return env


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.slow
def test_run_tiny_recipe_end_to_end(env, capsys):
    import prunekit

    assert main(["run", "tiny.yaml", "--out", "runs/t", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "tiny: lenet5 on fashion-mnist" in captured.out
    run_dir = env / "runs" / "t"
    report = json.loads((run_dir / "report.json").read_text())
    for side in ("dense", "pruned"):
        assert 0 <= report[side]["accuracy"] <= 1
        assert report[side]["params"] > 0 and report[side]["macs"] > 0
    assert report["pruned"]["params"] < report["dense"]["params"]
    assert report["prune"]["verified"] is True
    assert report["prune"]["max_error"] <= 1e-4
    env_info = report["environment"]
    for key in ("prunekit", "torch", "python", "machine", "seed", "threads", "batch_size"):
        assert key in env_info
    assert {"train", "prune", "finetune", "total"} <= set(report["timings"])
    # What only a resume needs is gone once the run is complete.
    assert not (run_dir / "checkpoints").exists()
    assert (run_dir / "stages" / "dense" / "prunekit.json").is_file()
    # The resolved recipe is saved and reads back.
    saved = Recipe.from_yaml(run_dir / "recipe.yaml")
    assert saved.model.input_shape == [1, 1, 28, 28]
    assert saved.out == str(Path("runs/t"))
    # The run directory is a loadable pruned model that computes like the reported one.
    model = prunekit.load(run_dir)
    assert sum(p.numel() for p in model.parameters()) == report["pruned"]["params"]
    # And every command accepts it.
    assert main(["profile", str(run_dir), "--no-latency", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == report["pruned"]["params"]


@pytest.mark.slow
def test_dense_model_is_cached(env, monkeypatch):
    import prunekit.train

    # Dense only (no pruning): the cache is about the dense training.
    recipe = Recipe.from_yaml(Path("tiny.yaml")).with_overrides(["prune=", "finetune="])
    calls = _count_calls(monkeypatch, prunekit.train, "fit")
    first = run_recipe(recipe, out="runs/a", progress=False)
    assert first.report["dense_source"] == "trained" and first.report["pruned"] is None
    assert len(calls) == 1
    (env / "runs" / "a" / "report.html").write_text("stale")
    second = run_recipe(recipe, out="runs/a", overwrite=True, progress=False)  # replaces run a
    assert second.report["dense_source"] == "cache"
    assert (env / "runs" / "a" / "report.html").read_text() != "stale"  # written afresh
    assert len(calls) == 1
    assert second.report["dense"]["accuracy"] == first.report["dense"]["accuracy"]
    # A different training config is a different cache entry.
    third = run_recipe(recipe.with_overrides(["train.lr=0.02"]), out="runs/c", progress=False)
    assert third.report["dense_source"] == "trained"
    assert len(calls) == 2
    entries = sorted(p.name for p in (env.parent / "cache" / "dense").iterdir())
    assert len(entries) == 2 and all(e.startswith("lenet5-") for e in entries)


@pytest.mark.slow
def test_resume_after_a_crash_in_fine_tuning(env, monkeypatch, capsys):
    import prunekit.train

    original = prunekit.train.fit
    state = {"calls": 0}

    def crashing_fit(model, data, **kwargs):
        state["calls"] += 1
        if state["calls"] == 2:  # the fine-tuning
            raise KeyboardInterrupt
        return original(model, data, **kwargs)

    monkeypatch.setattr(prunekit.train, "fit", crashing_fit)
    assert main(["run", "tiny.yaml", "--out", "runs/r", "-q"]) == 130
    err = capsys.readouterr().err
    assert "--resume runs/r" in err
    assert not (env / "runs/r/report.json").exists()

    monkeypatch.setattr(prunekit.train, "fit", original)
    calls = _count_calls(monkeypatch, prunekit.train, "fit")
    assert main(["run", "--resume", "runs/r", "-q"]) == 0
    assert len(calls) == 1  # dense training and pruning are not redone
    report = json.loads((env / "runs/r/report.json").read_text())
    assert report["resumed"] is True
    assert report["pruned"]["params"] < report["dense"]["params"]
    capsys.readouterr()
    # Resuming a finished run just prints its summary again.
    assert main(["run", "--resume", "runs/r", "-q"]) == 0
    assert "tiny: lenet5" in capsys.readouterr().out


def test_missing_data_exits_2_and_writes_nothing(env, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(env / "no-data-here"))
    assert main(["run", "tiny.yaml", "--out", "runs/x", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prunekit: error: Fashion-MNIST not found")
    assert not (env / "runs").exists()


def test_unknown_model_exits_2_and_writes_nothing(env, capsys):
    assert (
        main(["run", "tiny.yaml", "--set", "model.spec=nosuchmodel", "--out", "runs/x", "-q"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuchmodel" in err[0]
    assert not (env / "runs").exists()


def test_auto_scope_without_calibration_exits_2_before_training(env, capsys):
    argv = ["run", "tiny.yaml", "--set", "prune.scope=auto", "prune.calibration_batches=0"]
    assert main([*argv, "--out", "runs/x", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prune.scope: 'auto'" in err[0] and "calibration_batches" in err[0]
    assert not (env / "runs").exists()


def test_an_override_matching_no_layer_exits_2_before_training(env, capsys):
    argv = ["run", "tiny.yaml", "--set", "prune.overrides={nosuch.*: 0.5}", "--out", "runs/x"]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overrides patterns match no module or parameter: nosuch.*" in err[0]
    assert not (env / "runs").exists()


def test_show_prints_the_resolved_recipe(env, capsys):
    assert main(["run", "tiny.yaml", "--show", "--set", "train.epochs=2"]) == 0
    shown = Recipe.from_yaml(capsys.readouterr().out)
    assert shown.train.epochs == 2 and shown.name == "tiny"
    assert main(["run", "--show"]) == 0
    assert Recipe.from_yaml(capsys.readouterr().out) == load_recipe("default")


@pytest.mark.slow
def test_accuracy_drop_target_measures_held_out_batches(env, monkeypatch):
    """prune.target {accuracy_drop: d}: the bisection measures accuracy on `eval_batches` of the
    test split (not the calibration batches) and keeps within the bound."""
    import prunekit.structured.accuracy_target as accuracy_target

    recipe = TINY.replace(
        "prune: {ratio: 0.5}", "prune: {target: {accuracy_drop: 30}, eval_batches: 1}"
    )
    (env / "acc.yaml").write_text(recipe)
    evaluated = []
    original = accuracy_target._accuracy

    def spy(model, data):
        evaluated.append(sum(len(batch[1]) for batch in data))
        return original(model, data)

    monkeypatch.setattr(accuracy_target, "_accuracy", spy)
    assert main(["run", "acc.yaml", "--out", "runs/a", "-q"]) == 0
    # every round on the first test batch (the fixture's 32 test images), never on the 4
    # calibration batches of 16 training images
    assert len(evaluated) > 2 and set(evaluated) == {32}
    report = json.loads((env / "runs" / "a" / "report.json").read_text())
    assert report["prune"]["target"] == {"accuracy_drop": 30}
    assert report["pruned"]["macs"] < report["dense"]["macs"]


def test_accuracy_drop_is_in_points_not_a_fraction(env, capsys):
    argv = ["run", "tiny.yaml", "--set", "prune.ratio=null", "prune.target={accuracy_drop: 150}"]
    assert main([*argv, "--out", "runs/x", "-q"]) == 2
    assert "prune.target.accuracy_drop" in capsys.readouterr().err
    assert not (env / "runs").exists()
