"""Gradual pruning and mask keeping inside a PyTorch Lightning `Trainer`.

>>> import lightning as L
>>> from prunekit.train.lightning import PruningCallback
>>> trainer = L.Trainer(max_steps=1000, callbacks=[PruningCallback(sparsity=0.9, every=50)])  # doctest: +SKIP

The callback drives a `prunekit.unstructured.GradualSchedule` (Zhu & Gupta's cubic schedule;
pass one, or its arguments): it prunes the LightningModule's Linear/Conv weights at the scheduled
steps and, after every optimizer step, re-zeroes the pruned weights and their optimizer state.
Its state (the last sparsity reached, movement scores) goes into Lightning checkpoints.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from prunekit.train._schedule_state import gradual, schedule_state

__all__ = ["PruningCallback"]


class PruningCallback(pl.Callback):
    """Prune gradually during `trainer.fit` and keep the masks (one optimizer assumed)."""

    def __init__(self, schedule: Any = None, **schedule_kwargs: Any) -> None:
        super().__init__()
        self.schedule = gradual(schedule, schedule_kwargs)

    def _state(self, trainer: pl.Trainer, module: pl.LightningModule):
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        total = trainer.estimated_stepping_batches
        total = int(total) if total != float("inf") else 0
        return schedule_state(module, optimizer, trainer.global_step, total)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule.on_train_begin(self._state(trainer, pl_module))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        self.schedule.on_step_end(self._state(trainer, pl_module))

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state_dict)
