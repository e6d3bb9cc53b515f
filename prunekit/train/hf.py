"""Gradual pruning and mask keeping inside a Hugging Face `transformers.Trainer`.

>>> from transformers import Trainer
>>> from prunekit.train.hf import PruningCallback
>>> trainer = Trainer(model, args, train_dataset=ds,
...                   callbacks=[PruningCallback(sparsity=0.5, every=100)])  # doctest: +SKIP

The callback drives a `prunekit.unstructured.GradualSchedule` (pass one, or its arguments): it
prunes the model's Linear/Conv weights at the scheduled steps (`end` defaults to 75% of
`max_steps`) and, after every optimizer step, re-zeroes the pruned weights and their optimizer
state. Use `ignore=["lm_head"]` and the like to leave layers dense. The Trainer zeroes gradients
before `on_step_end`, so the `movement` criterion is not available here (use magnitude or wanda).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from prunekit.train._schedule_state import gradual, schedule_state

__all__ = ["PruningCallback"]


class PruningCallback(TrainerCallback):
    """Prune gradually during `Trainer.train` and keep the masks."""

    def __init__(self, schedule: Any = None, **schedule_kwargs: Any) -> None:
        self.schedule = gradual(schedule, schedule_kwargs)
        if getattr(self.schedule, "importance", None) == "movement":
            raise ValueError(
                "the Hugging Face Trainer zeroes gradients before callbacks run, so movement "
                "pruning cannot score there; use importance='magnitude' or 'wanda'"
            )

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.schedule.on_train_begin(
            schedule_state(model, optimizer, state.global_step, state.max_steps)
        )

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.schedule.on_step_end(
            schedule_state(model, optimizer, state.global_step, state.max_steps)
        )
