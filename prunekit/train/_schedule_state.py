"""The state a prunekit schedule reads, filled from another framework's training loop."""

from __future__ import annotations

from typing import Any

from torch import nn

from prunekit.train._state import TrainState


def schedule_state(model: nn.Module, optimizer: Any, step: int, total_steps: int) -> TrainState:
    """A `TrainState` for `GradualSchedule` / `KeepMasks` from a foreign loop's figures."""
    return TrainState(
        model=model, optimizer=optimizer, scheduler=None, step=int(step), total_steps=total_steps
    )


def gradual(schedule: Any, kwargs: dict[str, Any]) -> Any:
    """The schedule to drive: the one given, else a `GradualSchedule(**kwargs)`."""
    from prunekit.unstructured import GradualSchedule

    if schedule is not None and kwargs:
        raise TypeError("give either a schedule or GradualSchedule arguments, not both")
    return schedule if schedule is not None else GradualSchedule(**kwargs)
