"""Typed recipes: the whole train -> prune -> fine-tune -> evaluate job as dataclasses.

YAML is only the serialised form::

    >>> from prunekit.recipes import Recipe
    >>> r = Recipe.from_yaml("name: tiny\\nmodel: {spec: lenet5}\\nprune: {ratio: 0.5}")
    >>> r.prune.ratio, r.data.name
    (0.5, 'fashion-mnist')
    >>> Recipe.from_yaml(r.to_yaml()) == r
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from prunekit.recipes._typed import RecipeError, convert, from_dict, to_dict

TARGET_KEYS = ("macs", "params", "latency", "accuracy_drop")


def _positive(path: str, name: str, value: float | int | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RecipeError(f"{path}.{name}" if path else name, f"must be {bound}, got {value}")


@dataclass
class ModelConfig:
    """Which model: a spec (`vgg`, `torchvision:resnet18`, `file.py:fn`, a saved directory)."""

    spec: str
    input_shape: list[int] | None = None  # None -> prunekit.models.input_shape(spec)
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to build_model

    def _check(self, path: str) -> None:
        if not self.spec.strip():
            raise RecipeError(
                f"{path}.spec", "must not be empty, e.g. 'vgg' or 'torchvision:resnet18'"
            )
        if self.input_shape is not None and (
            not self.input_shape or any(d <= 0 for d in self.input_shape)
        ):
            raise RecipeError(
                f"{path}.input_shape",
                f"needs positive sizes, e.g. [1, 1, 28, 28]; got {self.input_shape}",
            )


@dataclass
class DataConfig:
    """Which data set (see prunekit.data.loaders)."""

    name: str = "fashion-mnist"
    root: str | None = None  # None -> $PRUNEKIT_DATA or the system location
    batch_size: int = 128
    subset: int | None = None  # use only the first N examples of each split

    def _check(self, path: str) -> None:
        _positive(path, "batch_size", self.batch_size)
        _positive(path, "subset", self.subset)


# the names prunekit.train.fit takes (train.OPTIMIZERS, train.SCHEDULES): checked when read
Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["onecycle", "cosine", "constant"]


@dataclass
class TrainConfig:
    """Dense training before pruning (skipped with `train: null` or `epochs: 0`)."""

    epochs: int = 3
    optimizer: Optimizer = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "onecycle"
    label_smoothing: float = 0.0
    cache: bool = True  # reuse a trained dense model from $PRUNEKIT_CACHE (~/.cache/prunekit)

    def _check(self, path: str) -> None:
        _positive(path, "epochs", self.epochs, allow_zero=True)
        _positive(path, "lr", self.lr)
        _positive(path, "momentum", self.momentum, allow_zero=True)
        _positive(path, "weight_decay", self.weight_decay, allow_zero=True)
        if not 0 <= self.label_smoothing < 1:
            raise RecipeError(
                f"{path}.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"
            )


@dataclass
class PruneConfig:
    """Structured pruning (prunekit.prune): give `ratio` or `target`, not both."""

    importance: str = "l2"
    ratio: float | None = None  # fraction of channels REMOVED per group
    # {"macs"|"params"|"latency": fraction KEPT} or {"accuracy_drop": points that may be lost}
    target: dict[str, float] | None = None
    scope: Literal["local", "global", "auto"] = "local"
    ignore: list[str] = field(default_factory=list)  # names/globs whose outputs are kept
    # {name or glob: ratio}: these modules' output channels lose this fraction, whatever the scope
    overrides: dict[str, float] = field(default_factory=dict)
    round_to: int | None = None
    attention: Literal["dims", "heads"] = "dims"  # head dims in every head, or whole heads
    calibration_batches: int = 4  # training batches handed to data-driven criteria
    eval_batches: int = 8  # test batches an accuracy_drop target measures accuracy on
    verify: bool = True

    def _check(self, path: str) -> None:
        p = f"{path}." if path else ""
        if (self.ratio is None) == (self.target is None):
            raise RecipeError(
                path or "prune",
                "give exactly one of 'ratio' (fraction of channels removed, e.g. 0.5) "
                "or 'target' (fraction of the cost kept, e.g. {macs: 0.5})",
            )
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise RecipeError(f"{p}ratio", f"must be in (0, 1), got {self.ratio}")
        if self.target is not None:
            if len(self.target) != 1:
                raise RecipeError(
                    f"{p}target",
                    "give one of macs, params, latency, accuracy_drop, e.g. {macs: 0.5}",
                )
            for key, value in self.target.items():
                if key not in TARGET_KEYS:
                    close = [k for k in TARGET_KEYS if k.startswith(key[:2])]
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise RecipeError(
                        f"{p}target.{key}",
                        f"unknown target{hint}; use one of {', '.join(TARGET_KEYS)}",
                    )
                if key == "accuracy_drop":
                    if not 0 < value < 100:
                        raise RecipeError(
                            f"{p}target.{key}",
                            f"must be accuracy points that may be lost in (0, 100), got {value}",
                        )
                    if not self.calibration_batches:
                        raise RecipeError(
                            f"{p}calibration_batches",
                            "an accuracy_drop target recalibrates BatchNorm on calibration "
                            "batches: set it above 0",
                        )
                elif not 0 < value <= 1:
                    raise RecipeError(
                        f"{p}target.{key}",
                        f"must be a fraction of the cost kept in (0, 1], got {value}",
                    )
        for name, value in self.overrides.items():
            if not 0 <= value < 1:
                raise RecipeError(
                    f"{p}overrides.{name}", f"must be a fraction removed in [0, 1), got {value}"
                )
        _positive(path, "round_to", self.round_to)
        _positive(path, "eval_batches", self.eval_batches)
        _positive(path, "calibration_batches", self.calibration_batches, allow_zero=True)


SCHEDULES = ("one-shot", "iterative", "gradual")


@dataclass
class SparsifyConfig:
    """Unstructured, N:M or block sparsity (prunekit.sparsify), after any structured pruning.

    `schedule`: "one-shot" (prune once, then fine-tune keeping the zeros), "iterative" (`rounds`
    of prune -> fine-tune for `finetune.epochs` each, Han et al.) or "gradual" (Zhu & Gupta's
    cubic ramp during fine-tuning, pruning every `every` steps until 75% of the steps).
    """

    sparsity: float | None = None  # final fraction of zeros; implied by an N:M pattern
    pattern: str = "unstructured"  # or "2:4", "block4x4"
    importance: str = "magnitude"  # magnitude | wanda | movement
    scope: str = "global"  # global | local | std | lamp | erk
    schedule: Literal["one-shot", "iterative", "gradual"] = "one-shot"
    rounds: int = 3  # iterative only
    every: int = 100  # gradual only: optimizer steps between pruning steps
    ignore: list[str] = field(default_factory=list)  # names/globs left dense
    calibration_batches: int = 4  # training batches handed to wanda

    def _check(self, path: str) -> None:
        from prunekit.unstructured import parse_pattern

        p = f"{path}." if path else ""
        try:
            kind = parse_pattern(self.pattern).kind
        except ValueError as err:
            raise RecipeError(f"{p}pattern", str(err)) from None
        if kind == "nm":
            if self.sparsity is not None:
                raise RecipeError(
                    f"{p}sparsity", f"pattern {self.pattern!r} fixes the sparsity: leave it out"
                )
            if self.schedule != "one-shot":
                raise RecipeError(
                    f"{p}schedule", f"pattern {self.pattern!r} is applied once: use 'one-shot'"
                )
        elif self.sparsity is None or not 0 < self.sparsity < 1:
            raise RecipeError(
                f"{p}sparsity", f"give the final fraction of zeros in (0, 1), got {self.sparsity}"
            )
        _positive(path, "rounds", self.rounds)
        _positive(path, "every", self.every)
        _positive(path, "calibration_batches", self.calibration_batches, allow_zero=True)


@dataclass
class DistillConfig:
    """Knowledge distillation from the dense model while fine-tuning."""

    temperature: float = 4.0
    weight: float = 0.5  # weight of the distillation loss, (1 - weight) for the labels

    def _check(self, path: str) -> None:
        _positive(path, "temperature", self.temperature)
        if not 0 <= self.weight <= 1:
            raise RecipeError(f"{path}.weight", f"must be in [0, 1], got {self.weight}")


@dataclass
class FinetuneConfig:
    """Fine-tuning after pruning, to recover accuracy (skipped with `finetune: null`)."""

    epochs: int = 1
    optimizer: Optimizer = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Schedule = "onecycle"
    label_smoothing: float = 0.0
    distillation: DistillConfig | None = None

    def _check(self, path: str) -> None:
        TrainConfig._check(self, path)  # same numeric rules


@dataclass
class EvalConfig:
    """Measurement of the dense and the pruned model."""

    latency: bool = True
    batch_size: int = 1  # batch size of the latency/memory measurement

    def _check(self, path: str) -> None:
        _positive(path, "batch_size", self.batch_size)


@dataclass
class Recipe:
    """One pruning job. `Recipe.from_yaml(text_or_path)` / `recipe.to_yaml()`."""

    model: ModelConfig
    name: str = "recipe"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig | None = field(default_factory=TrainConfig)
    prune: PruneConfig | None = field(default_factory=lambda: PruneConfig(target={"macs": 0.5}))
    sparsify: SparsifyConfig | None = None
    finetune: FinetuneConfig | None = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None  # run directory; None -> runs/<name>-<timestamp>

    def _check(self, path: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise RecipeError(
                "name",
                f"use letters, digits, '-', '_' or '.' (it names the run directory), got {self.name!r}",
            )
        s = self.sparsify
        if s is not None and s.schedule != "one-shot":
            if self.finetune is None or self.finetune.epochs == 0:
                raise RecipeError(
                    "sparsify.schedule",
                    f"{s.schedule!r} prunes while fine-tuning: give finetune.epochs > 0 "
                    "(or use 'one-shot')",
                )

    # --- serialisation -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build a recipe from parsed YAML/JSON; raises RecipeError (a ValueError) with the key path."""
        if data is None:
            raise RecipeError("", "the recipe is empty; it needs at least 'model: {spec: ...}'")
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        data = to_dict(self)
        # Read top-down: name and seed first, then the stages in the order they run.
        order = ["name", "seed", "model", "data", "train", "prune", "sparsify", "finetune", "eval"]
        order.append("out")
        return {k: data[k] for k in order if k in data} | data

    @classmethod
    def from_yaml(cls, source: str | Path) -> Recipe:
        """Parse YAML text, or read a .yaml file when given a Path or the name of an existing file."""
        text = _read_source(source)
        try:
            data = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise RecipeError("", f"invalid YAML{where}: {problem}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        from prunekit.recipes._rundir import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())

    def with_overrides(self, assignments: list[str] | tuple[str, ...]) -> Recipe:
        """Apply `key.path=value` assignments (values parsed as YAML), e.g. `prune.ratio=0.3`."""
        data = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            key = key.strip()
            if not sep or not key:
                raise RecipeError(
                    "", f"--set expects KEY=VALUE, e.g. prune.ratio=0.3; got {assignment!r}"
                )
            try:
                value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            node = data
            parts = key.split(".")
            for depth, part in enumerate(parts[:-1]):
                child = node.get(part) if isinstance(node, dict) else None
                if child is None:
                    child = {}
                    if not isinstance(node, dict):
                        raise RecipeError(".".join(parts[: depth + 1]), "is not a section")
                    node[part] = child
                node = child
            if not isinstance(node, dict):
                raise RecipeError(".".join(parts[:-1]), "is not a section")
            node[parts[-1]] = value
        return Recipe.from_dict(data)


def _read_source(source: str | Path) -> str:
    if isinstance(source, Path):
        try:
            return source.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(f"recipe file not found: {source}") from None
    if "\n" not in source and source.endswith((".yaml", ".yml")):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {source}")
        return path.read_text()
    return source


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with prunekit (`prunekit run NAME`)."""
    folder = resources.files("prunekit.recipes")
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path | None = None) -> Recipe:
    """A built-in recipe by name (`default`), or a YAML file; None means `default`."""
    if name_or_path is None:
        name_or_path = "default"
    if (
        isinstance(name_or_path, str)
        and "/" not in name_or_path
        and not name_or_path.endswith((".yaml", ".yml"))
    ):
        if name_or_path not in builtin_recipes():
            raise FileNotFoundError(
                f"no built-in recipe {name_or_path!r} (built-in: {', '.join(builtin_recipes())}); "
                "or pass a path to a .yaml file"
            )
        text = resources.files("prunekit.recipes").joinpath(f"{name_or_path}.yaml").read_text()
        return Recipe.from_yaml(text)
    path = Path(name_or_path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory; to continue a run use --resume {path}")
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    return Recipe.from_yaml(path)


# --- YAML dialect -------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `5e-4` as a float (YAML 1.1 needs a dot: `5.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# YAML 1.1 reads `2:4` as the base-60 integer 124; a recipe means the N:M pattern (YAML 1.2).
_INT = "tag:yaml.org,2002:int"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != _INT]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


class _Dumper(yaml.SafeDumper):
    """Short lists of scalars in flow style (`input_shape: [1, 1, 28, 28]`)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in data) and len(data) <= 8
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> yaml.Node:
    # Only small mappings of numbers (`target: {macs: 0.5}`); sections stay in block style.
    flow = 0 < len(data) <= 3 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in data.values()
    )
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow or None)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(dict, _represent_dict)

__all__ = [
    "Recipe",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "PruneConfig",
    "SparsifyConfig",
    "FinetuneConfig",
    "DistillConfig",
    "EvalConfig",
    "RecipeError",
    "load_recipe",
    "builtin_recipes",
    "convert",
]
