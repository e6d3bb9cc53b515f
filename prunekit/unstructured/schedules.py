"""Schedules: one-shot, iterative (prune -> retrain rounds) and gradual (Zhu & Gupta 2017).

Plain dataclasses a recipe can build (``schedules.get("gradual")(sparsity=0.9, ...)``, or
``from_dict``). `GradualSchedule` is also a `prunekit.train.fit` callback; `IterativeSchedule.run`
drives prune -> retrain rounds with your training function.

>>> GradualSchedule(sparsity=0.9, begin=0, end=100, every=10).sparsity_at(50)
0.7875
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.unstructured._importance import Movement, resolve_importance
from prunekit.unstructured._masks import apply_masks, zero_optimizer_state
from prunekit.unstructured._patterns import parse_pattern
from prunekit.unstructured._registry import Registry
from prunekit.unstructured._report import SparsityReport
from prunekit.unstructured._sparsify import DEFAULT_IMPORTANCE, DEFAULT_SCOPE, sparsify

schedules = Registry("schedule")


def _check_level(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a fraction of zeros in [0, 1), got {value!r}")


class _Config:
    """to_dict / from_dict for the schedule dataclasses (recipes serialise them as YAML)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name}  # type: ignore[attr-defined]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "data":
                continue
            if f.name == "importance" and not isinstance(value, str):
                value = getattr(value, "name", type(value).__name__)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        data = {k: v for k, v in data.items() if k != "name"}
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} fields: {', '.join(unknown)}; valid: {sorted(names)}"
            )
        return cls(**data)


@schedules.register("gradual")
@dataclass
class GradualSchedule(_Config):
    """Zhu & Gupta's cubic schedule, pruning every `every` steps from step `begin` to `end`:
    ``s_t = s_f + (s_i - s_f) * (1 - (t - begin) / (end - begin))^3``.

    As a fit callback it prunes at ``begin, begin + every, ..., end`` (the last multiple of
    `every` is followed by `end` itself, so the final sparsity is always reached) and keeps the
    masks and the optimizer state zero after every step. `end=None` means 75% of the run's
    steps (known when training begins). Other `sparsify` arguments go in the fields below.
    """

    name = "gradual"
    sparsity: float = 0.9
    initial: float = 0.0
    begin: int = 0
    end: int | None = None
    every: int = 100
    importance: Any = DEFAULT_IMPORTANCE
    scope: str = DEFAULT_SCOPE
    pattern: str = "unstructured"
    ignore: tuple[str, ...] = ()
    data: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_level("sparsity", self.sparsity)
        _check_level("initial", self.initial)
        if self.initial > self.sparsity:
            raise ValueError(f"initial ({self.initial}) must not exceed sparsity ({self.sparsity})")
        if self.every < 1 or self.begin < 0:
            raise ValueError(f"every must be >= 1 and begin >= 0, got {self.every}, {self.begin}")
        if self.end is not None and self.end < self.begin:
            raise ValueError(f"end ({self.end}) must be >= begin ({self.begin})")
        self.ignore = tuple(self.ignore)
        _no_nm(self.pattern)
        self._scorer = self.importance
        if self.importance == "movement":
            self._scorer = Movement()  # accumulated by this callback
        resolve_importance(self._scorer)  # fail now on an unknown name
        self._last: float | None = None

    def sparsity_at(self, step: int, end: int | None = None) -> float:
        """The target sparsity after `step` optimizer steps (constant outside [begin, end])."""
        end = self.end if end is None else end
        if end is None:
            raise ValueError("end is unknown: give end= (steps) or use the schedule inside fit")
        if step < self.begin:
            return 0.0
        if step >= end or end == self.begin:
            return self.sparsity
        progress = (step - self.begin) / (end - self.begin)
        return self.sparsity + (self.initial - self.sparsity) * (1 - progress) ** 3

    def is_pruning_step(self, step: int, end: int) -> bool:
        return self.begin <= step <= end and ((step - self.begin) % self.every == 0 or step == end)

    def prune(self, model: nn.Module, level: float) -> SparsityReport:
        report = sparsify(
            model,
            level,
            importance=self._scorer,
            scope=self.scope,
            pattern=self.pattern,
            data=self.data,
            ignore=list(self.ignore),
        )
        self._last = level
        return report

    # ----- fit callback
    def on_train_begin(self, state: Any) -> None:
        if self.end is None and not state.total_steps:
            raise ValueError(
                "GradualSchedule(end=None) needs the run's length: give end= (in steps) or "
                "training data with len()"
            )
        self._end = (
            self.end if self.end is not None else max(self.begin, 3 * state.total_steps // 4)
        )
        if state.step == 0 and self.begin == 0 and self.sparsity_at(0, self._end) > 0:
            self.prune(state.model, self.sparsity_at(0, self._end))
        apply_masks(state.model)

    def on_step_end(self, state: Any) -> None:
        if isinstance(self._scorer, Movement):
            self._scorer.on_step_end(state)
        if self.is_pruning_step(state.step, self._end):
            level = self.sparsity_at(state.step, self._end)
            if level != self._last:
                self.prune(state.model, level)
        apply_masks(state.model)
        zero_optimizer_state(state.model, state.optimizer)

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"last": self._last}
        if isinstance(self._scorer, Movement):
            out["movement"] = self._scorer.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = state.get("last")
        if "movement" in state and isinstance(self._scorer, Movement):
            self._scorer.load_state_dict(state["movement"])


SPACINGS = ("geometric", "linear", "cubic")


def _no_nm(pattern: str) -> None:
    if parse_pattern(pattern).kind == "nm":
        raise ValueError(
            f"pattern {pattern!r} fixes the sparsity, so it has no schedule: call "
            "prunekit.sparsify(model, pattern=...) once, then fine-tune with KeepMasks"
        )


@schedules.register("iterative")
@dataclass
class IterativeSchedule(_Config):
    """Prune -> retrain rounds (Han et al. 2015) towards `sparsity` in `rounds` rounds.

    Round sparsities: "geometric" (default; every round removes the same fraction of the weights
    that remain), "linear", or "cubic" (Zhu & Gupta's curve sampled at the rounds). `run` calls
    `sparsify` then your ``retrain(model, round_index)`` each round (use `KeepMasks` there).
    """

    name = "iterative"
    sparsity: float = 0.9
    rounds: int = 3
    spacing: str = "geometric"
    importance: Any = DEFAULT_IMPORTANCE
    scope: str = DEFAULT_SCOPE
    pattern: str = "unstructured"
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_level("sparsity", self.sparsity)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; use one of {', '.join(SPACINGS)}")
        self.ignore = tuple(self.ignore)
        _no_nm(self.pattern)
        resolve_importance(self.importance)

    def sparsities(self) -> list[float]:
        """The sparsity reached after each round (the last is `sparsity`)."""
        n, s = self.rounds, self.sparsity
        out = []
        for r in range(1, n + 1):
            if self.spacing == "geometric":
                out.append(1 - (1 - s) ** (r / n))
            elif self.spacing == "linear":
                out.append(s * r / n)
            else:
                out.append(s - s * (1 - r / n) ** 3)
        out[-1] = s
        return out

    def run(
        self,
        model: nn.Module,
        retrain: Callable[[nn.Module, int], Any] | None = None,
        *,
        data: Iterable[Any] | None = None,
    ) -> list[SparsityReport]:
        """Each round: `sparsify` to the round's sparsity, then ``retrain(model, round)``."""
        reports = []
        for r, level in enumerate(self.sparsities()):
            reports.append(
                sparsify(
                    model,
                    level,
                    importance=self.importance,
                    scope=self.scope,
                    pattern=self.pattern,
                    data=data,
                    ignore=list(self.ignore),
                )
            )
            if retrain is not None:
                retrain(model, r)
        return reports


def one_shot(sparsity: float, **kwargs: Any) -> IterativeSchedule:
    """One round: prune once to `sparsity`, then (optionally) fine-tune once."""
    return IterativeSchedule(sparsity=sparsity, rounds=1, **kwargs)


schedules.register("one-shot", one_shot)

__all__ = ["GradualSchedule", "IterativeSchedule", "one_shot", "schedules", "SPACINGS"]
