"""What a training run reports (History) and what callbacks see (TrainState)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn


@dataclass
class History:
    """Per-epoch results of :func:`prunekit.train.fit` (one list entry per epoch run).

    ``train_acc`` / ``eval_*`` are None where not measured (custom loss, no eval data).
    ``steps`` is the cumulative optimizer step count at the end of each epoch and ``seconds``
    the wall-clock time of each epoch, evaluation included.
    """

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float | None] = field(default_factory=list)
    eval_loss: list[float | None] = field(default_factory=list)
    eval_acc: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (NaN becomes None)."""
        clean = {
            k: [None if isinstance(v, float) and math.isnan(v) else v for v in vs]
            for k, vs in asdict(self).items()
        }
        return clean

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**{k: list(data.get(k, [])) for k in cls.__dataclass_fields__})


@dataclass
class TrainState:
    """The live state passed to callbacks.

    ``epoch`` is the 0-based epoch being run, ``batch`` the batches done in it, ``step`` the
    optimizer steps done overall (of ``total_steps``), ``loss`` the last step's loss. Setting
    ``stop = True`` ends training after the current step.
    """

    model: nn.Module
    optimizer: Any
    scheduler: Any
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    batch: int = 0
    loss: float | None = None
    history: History = field(default_factory=History)
    stop: bool = False


class Callback:
    """Optional base class: every hook is a no-op. Any object with some of these methods works.

    ``on_step_end`` runs right after ``optimizer.step()`` (and the scheduler step), so a callback
    that keeps pruned weights at zero can re-apply its masks there. A callback with
    ``state_dict()`` / ``load_state_dict()`` is saved in and restored from checkpoints.
    """

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...
