"""Recipes: YAML round trip, defaults, and errors that name the key's dotted path and the fix."""

from __future__ import annotations

import pytest

from prunekit.recipes import (
    DistillConfig,
    FinetuneConfig,
    ModelConfig,
    PruneConfig,
    Recipe,
    RecipeError,
    builtin_recipes,
    load_recipe,
)


def test_default_recipe_is_shipped_and_valid():
    assert "default" in builtin_recipes()
    recipe = load_recipe()
    assert recipe == load_recipe("default")
    assert recipe.name == "default"
    assert recipe.model.spec == "vgg"
    assert recipe.data.name == "fashion-mnist"
    assert recipe.prune.target == {"macs": 0.5}
    assert recipe.prune.ratio is None
    assert recipe.prune.importance == "l2"
    assert recipe.finetune.epochs == 1


@pytest.mark.parametrize(
    "recipe",
    [
        load_recipe("default"),
        Recipe(model=ModelConfig(spec="lenet5")),
        Recipe(
            model=ModelConfig(
                spec="torchvision:resnet18",
                input_shape=[1, 3, 224, 224],
                kwargs={"num_classes": 10},
            ),
            name="r18",
            seed=3,
            train=None,
            prune=PruneConfig(
                ratio=0.3,
                scope="global",
                ignore=["fc", "layer4.*"],
                overrides={"conv1": 0.1, "layer1.*": 0.2},
                round_to=8,
            ),
            finetune=FinetuneConfig(
                epochs=2, lr=0.005, distillation=DistillConfig(temperature=2.0, weight=0.9)
            ),
            out="runs/r18",
        ),
        Recipe(model=ModelConfig(spec="lenet300"), prune=None, finetune=None),
    ],
)
def test_yaml_round_trip(recipe):
    text = recipe.to_yaml()
    again = Recipe.from_yaml(text)
    assert again == recipe
    assert again.to_yaml() == text
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_file_round_trip(tmp_path):
    recipe = load_recipe().with_overrides(["name=mine", "prune.target.macs=0.3"])
    path = tmp_path / "mine.yaml"
    recipe.save(path)
    assert load_recipe(str(path)) == recipe
    assert Recipe.from_yaml(path) == recipe
    assert recipe.prune.target == {"macs": 0.3}


def test_minimal_recipe_gets_defaults():
    recipe = Recipe.from_yaml("model: {spec: lenet5}\n")
    assert recipe.seed == 0 and recipe.data.batch_size == 128
    assert recipe.prune.target == {"macs": 0.5}


def test_scientific_notation_without_dot_is_a_float():
    recipe = Recipe.from_yaml("model: {spec: vgg}\ntrain: {weight_decay: 5e-4, lr: 1e-1}\n")
    assert recipe.train.weight_decay == pytest.approx(5e-4)
    assert recipe.train.lr == pytest.approx(0.1)


def test_int_is_accepted_for_float():
    assert Recipe.from_yaml("model: {spec: vgg}\ntrain: {lr: 1}").train.lr == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "model: {spec: vgg}\nprune: {ratoi: 0.5}",
            "prune.ratoi: unknown key (did you mean 'ratio'?)",
        ),
        ("modle: {spec: vgg}", "modle: unknown key (did you mean 'model'?)"),
        (
            "model: {spec: vgg}\nfinetune: {distillation: {weigth: 1}}",
            "finetune.distillation.weigth: unknown key (did you mean 'weight'?)",
        ),
        ("model: {spec: vgg}\ntrain: {zzz: 1}", "train.zzz: unknown key; allowed keys: epochs"),
        ("model: {spec: vgg}\ntrain: {lr: fast}", "train.lr: expected a number, got 'fast'"),
        ("model: {spec: vgg}\ntrain: {epochs: 1.5}", "train.epochs: expected an integer, got 1.5"),
        ("model: {spec: vgg}\ntrain: {cache: 1}", "train.cache: expected true or false, got 1"),
        ("model: {spec: vgg}\ndata: {name: 3}", "data.name: expected a string, got 3"),
        (
            "model: {spec: vgg, input_shape: [1, x]}",
            "model.input_shape[1]: expected an integer, got 'x'",
        ),
        ("model: {spec: vgg}\ntrain: [1, 2]", "train: expected a mapping, got [1, 2]"),
        (
            "model: {spec: vgg}\nprune: {scope: glob}",
            "prune.scope: expected one of 'local', 'global', 'auto', got 'glob' (str) (did you mean 'global'?)",
        ),
        ("model: {spec: vgg}\nprune: {ratio: 1.5}", "prune.ratio: must be in (0, 1), got 1.5"),
        (
            "model: {spec: vgg}\nprune: {ratio: 0.5, overrides: {features.0: 1}}",
            "prune.overrides.features.0: must be a fraction removed in [0, 1), got 1",
        ),
        (
            "model: {spec: vgg}\nprune: {ratio: 0.5, overrides: {features.0: all}}",
            "prune.overrides.features.0: expected a number, got 'all'",
        ),
        (
            "model: {spec: vgg}\nprune: {ratio: 0.5, target: {macs: 0.5}}",
            "prune: give exactly one of 'ratio'",
        ),
        (
            "model: {spec: vgg}\nprune: {target: {mac: 0.5}}",
            "prune.target.mac: unknown target (did you mean 'macs'?)",
        ),
        (
            "model: {spec: vgg}\nprune: {target: {macs: 0}}",
            "prune.target.macs: must be a fraction of the cost kept in (0, 1]",
        ),
        ("model: {spec: vgg}\ntrain: {lr: -1}", "train.lr: must be > 0, got -1"),
        ("model: {spec: vgg}\ndata: {batch_size: 0}", "data.batch_size: must be > 0, got 0"),
        ("model: {spec: vgg, input_shape: [1, 0, 28]}", "model.input_shape: needs positive sizes"),
        ("name: default\n", "model: required key is missing"),
        ("model: {spec: vgg}\nname: 'a b'", "name: use letters, digits"),
        ("", "the recipe is empty"),
        ("model: [", "invalid YAML at line 1"),
        ("- 1\n- 2", "expected a mapping, got [1, 2]"),
    ],
)
def test_errors_name_the_key_path(text, expected):
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(text)
    message = str(info.value)
    assert message.startswith("recipe error: ")
    assert expected in message
    assert isinstance(info.value, ValueError)  # -> exit code 2 in the CLI


def test_overrides():
    recipe = load_recipe().with_overrides(
        [
            "train.epochs=1",
            "prune.target=",
            "prune.ratio=0.25",
            "finetune.distillation.weight=0.7",
            "eval.latency=false",
        ]
    )
    assert recipe.train.epochs == 1
    assert recipe.prune.ratio == 0.25 and recipe.prune.target is None
    assert recipe.finetune.distillation == DistillConfig(weight=0.7)
    assert recipe.eval.latency is False
    with pytest.raises(RecipeError, match="prune.ratoi: unknown key"):
        load_recipe().with_overrides(["prune.ratoi=0.3"])
    with pytest.raises(RecipeError, match="expects KEY=VALUE"):
        load_recipe().with_overrides(["prune.ratio"])


def test_load_recipe_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no built-in recipe 'nope'"):
        load_recipe("nope")
    with pytest.raises(FileNotFoundError, match="recipe file not found"):
        load_recipe(str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="--resume"):
        load_recipe(str(tmp_path) + "/")


@pytest.mark.parametrize("name", builtin_recipes())
def test_every_builtin_recipe_loads_round_trips_and_names_itself(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe


def test_distillation_recipe_distils_at_4x():
    recipe = load_recipe("resnet20_4x_distill")
    assert recipe.prune.target == {"macs": 0.25}
    assert recipe.finetune.distillation is not None
