"""The training loop: one small function, callbacks for everything else.

A step is: fetch a batch -> loss (+ distillation, + regularizers) -> backward -> optimizer and
scheduler step -> ``on_step_end`` callbacks. Checkpoints hold everything needed to continue
bit-exactly: weights, optimizer, scheduler, position (epoch, batch, step), RNG states, the running
epoch statistics, history and callback states.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.train import distributed
from prunekit.train._checkpoint import load_checkpoint, save_checkpoint
from prunekit.train._eval import (
    ForwardFn,
    LossFn,
    batch_size_of,
    count_correct,
    cross_entropy,
    default_forward,
    device_of,
    evaluate,
    logits_of,
    set_mode,
    to_device,
)
from prunekit.train._progress import EpochProgress
from prunekit.train._seed import get_rng_state, set_rng_state, set_seed
from prunekit.train._state import History, TrainState

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
Regularizer = Callable[[nn.Module], torch.Tensor]


def fit(
    model: nn.Module,
    train_data: Iterable[Any],
    *,
    epochs: int = 1,
    optimizer: str | torch.optim.Optimizer = "sgd",
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str | Callable[[torch.optim.Optimizer, int | None], Any] = "onecycle",
    label_smoothing: float = 0.0,
    seed: int = 0,
    teacher: nn.Module | None = None,
    distill_temperature: float = 4.0,
    distill_weight: float = 0.5,
    loss_fn: LossFn | None = None,
    forward_fn: ForwardFn | None = None,
    callbacks: Sequence[Any] = (),
    regularizers: Sequence[Regularizer] = (),
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    eval_data: Iterable[Any] | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    grad_clip: float | None = None,
) -> History:
    """Train ``model`` in place on ``(inputs, targets)`` batches and return its :class:`History`.

    The loss is cross-entropy (with ``label_smoothing``) on ``forward_fn(model, inputs)`` unless
    ``loss_fn(model, batch)`` is given. With a ``teacher`` (kept in eval mode, no grad) it becomes
    ``(1 - w) * task + w * T^2 * KL(teacher/T || student/T)``. Each of ``regularizers(model)`` is
    added. ``callbacks`` get ``on_train_begin / on_step_end / on_epoch_end / on_train_end(state)``.
    With ``checkpoint=PATH`` the run is saved atomically every epoch (and every
    ``checkpoint_every`` steps, and on Ctrl-C); ``resume=True`` continues from it exactly.
    Same ``seed`` and data give bit-identical weights on CPU.

    >>> from prunekit.data import loaders
    >>> from prunekit.models import build_model
    >>> train, test = loaders("digits", batch_size=64)
    >>> model = build_model("lenet300", image_size=8)
    >>> history = fit(model, train, epochs=2, lr=0.1, eval_data=test, progress=False)
    >>> history.eval_acc[-1] > 0.8
    True
    """
    if epochs < 0 or (max_steps is not None and max_steps < 0):
        raise ValueError(f"epochs and max_steps must be >= 0, got {epochs} and {max_steps}")
    if not 0.0 <= distill_weight <= 1.0 or distill_temperature <= 0:
        raise ValueError("distill_weight must be in [0, 1] and distill_temperature > 0")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1 step, got {checkpoint_every}")
    mode = model.training
    try:
        model.train()  # (an exported graph's module refuses)
        model.train(mode)
    except NotImplementedError:
        raise TypeError(
            "this model is an exported graph (torch.export) with its train/eval mode baked in; "
            "it cannot be fine-tuned: prune the eager model instead"
        ) from None
    set_seed(seed)
    if distributed.active() and hasattr(train_data, "sharded"):  # torchrun: this rank's part
        train_data = train_data.sharded(distributed.rank(), distributed.world_size())
    progress = progress and distributed.is_main()
    per_epoch = len(train_data) if hasattr(train_data, "__len__") else None  # type: ignore[arg-type]
    total = per_epoch * epochs if per_epoch is not None else None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    opt = _make_optimizer(model, optimizer, lr, momentum, weight_decay)
    sched = _make_scheduler(opt, schedule, lr, total)
    state = TrainState(model, opt, sched, total_steps=total or 0)
    trainer = distributed.wrap(model)  # DDP under torchrun: gradients averaged over ranks
    last_step = total if total is not None else math.inf

    def step_loss(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        forward = forward_fn or default_forward
        inputs, targets = batch[0], batch[1]
        logits = None
        if loss_fn is None or teacher is not None:
            logits = logits_of(forward(trainer, inputs))
        if loss_fn is not None:
            loss = loss_fn(trainer, batch)  # (a second forward when distilling: see docs)
        else:
            loss = cross_entropy(logits, targets, label_smoothing)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = logits_of(forward(teacher, inputs))
            kd = _distill(logits, teacher_logits, distill_temperature)
            loss = (1 - distill_weight) * loss + distill_weight * kd
        for reg in regularizers:
            loss = loss + reg(model)
        return loss, logits

    # Where the run stands. `stats` are the running sums of the current epoch; `epoch_rng` the RNG
    # state at its start (to replay a shuffling DataLoader's order on resume).
    stats, epoch_rng, finished = _new_stats(), None, False
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        stats, epoch_rng, finished = _restore(checkpoint, state, callbacks)

    def save(epoch: int, batch: int, rng: dict[str, Any]) -> None:
        if not distributed.is_main():  # one writer; every rank holds the same weights
            return
        cb_states = [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in callbacks]
        done = state.stop or state.step >= last_step or epoch >= epochs
        payload = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                   "scheduler": sched.state_dict(), "epoch": epoch, "batch": batch,
                   "step": state.step, "total_steps": state.total_steps, "finished": bool(done),
                   "rng": rng, "epoch_rng": epoch_rng, "stats": dict(stats),
                   "history": state.history.to_dict(), "callbacks": cb_states}  # fmt: skip
        save_checkpoint(checkpoint, payload)  # type: ignore[arg-type]

    device, was_training = device_of(model), model.training
    teacher_was_training = teacher is not None and teacher.training
    if teacher is not None:
        set_mode(teacher, False)
    # `phase` says what a KeyboardInterrupt would interrupt, hence what can be saved.
    phase, boundary_rng = "boundary", get_rng_state()
    bar = EpochProgress(progress, epochs)
    try:
        with bar, _DeferredInterrupt(checkpoint is not None) as sigint:
            _call(callbacks, "on_train_begin", state)
            while not (finished or state.stop) and state.epoch < epochs and state.step < last_step:
                if hasattr(train_data, "set_epoch"):
                    train_data.set_epoch(state.epoch)
                if state.batch == 0:
                    epoch_rng, stats = get_rng_state(), _new_stats()
                batches = _batches(train_data, state.batch, epoch_rng)
                bar.start_epoch(state.epoch, per_epoch, state.batch)
                t0 = time.perf_counter() - stats["seconds"]
                model.train()
                while not state.stop and state.step < last_step:
                    phase, boundary_rng = "fetch", (get_rng_state() if checkpoint else None)
                    batch = next(batches, None)
                    if batch is None:
                        break
                    phase = "compute"
                    batch = to_device(batch, device)
                    loss, logits = step_loss(batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    phase = "update"  # parameters change: no consistent checkpoint until done
                    opt.step()
                    if state.step + 1 < last_step:  # (OneCycleLR fails past its last step)
                        sched.step()
                    state.step, state.batch, state.loss = (
                        state.step + 1,
                        state.batch + 1,
                        loss.detach().item(),
                    )
                    _add_stats(stats, state.loss, logits, batch, time.perf_counter() - t0)
                    phase = "boundary"
                    bar.step(stats["loss_sum"] / stats["n"], opt.param_groups[0]["lr"])
                    _call(callbacks, "on_step_end", state)
                    if checkpoint and checkpoint_every and state.step % checkpoint_every == 0:
                        save(state.epoch, state.batch, get_rng_state())
                    sigint.check()

                # End of the epoch (or of training, when stopped early).
                phase, boundary_rng = "eval", get_rng_state()
                result = None
                if eval_data is not None:
                    result = evaluate(model, eval_data, loss_fn=loss_fn, forward_fn=forward_fn)
                _record_epoch(state, stats, result, time.perf_counter() - t0)
                phase = "epoch_end"
                bar.end_epoch(state.epoch, _summary(state.history))
                _call(callbacks, "on_epoch_end", state)
                state.epoch, state.batch, stats = state.epoch + 1, 0, _new_stats()
                phase = "boundary"
                if checkpoint:
                    save(state.epoch, 0, get_rng_state())
                sigint.check()
            _call(callbacks, "on_train_end", state)
    except KeyboardInterrupt:
        if checkpoint is not None:  # save the last consistent position, then stop
            if phase == "update":
                warnings.warn(
                    "interrupted inside optimizer.step(): kept the last checkpoint", stacklevel=2
                )
            elif phase in ("fetch", "compute", "eval"):
                save(state.epoch, state.batch, boundary_rng)  # type: ignore[arg-type]
            elif phase == "epoch_end":  # the epoch is in the history: resume at the next one
                stats = _new_stats()
                save(state.epoch + 1, 0, get_rng_state())
            else:
                save(state.epoch, state.batch, get_rng_state())
        raise
    finally:
        model.train(was_training)
        if teacher is not None:
            set_mode(teacher, teacher_was_training)
    return state.history


def _make_optimizer(
    model: nn.Module, optimizer: Any, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")


def _make_scheduler(
    opt: torch.optim.Optimizer, schedule: Any, lr: float, total_steps: int | None
) -> Any:
    if callable(schedule):  # schedule(optimizer, total_steps) -> scheduler
        return schedule(opt, total_steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if not total_steps:
        raise ValueError(
            f"schedule {schedule!r} needs the number of steps: give data with len() or max_steps"
        )
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)


def _distill(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over examples (or tokens)."""
    s = F.log_softmax(student.reshape(-1, student.shape[-1]) / temperature, dim=-1)
    t = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _attach_saved_masks(model: nn.Module, saved: dict[str, Any]) -> None:
    """Masks that a callback (e.g. a gradual pruning schedule) added after training began are in
    the checkpoint but not yet on the model: attach them so the strict load fills them."""
    from prunekit.unstructured import restore_masks
    from prunekit.unstructured._masks import MASK_SUFFIX

    own = model.state_dict().keys()
    restore_masks(
        model,
        [k[: -len(MASK_SUFFIX)] for k in saved if k.endswith(MASK_SUFFIX) and k not in own],
    )


def _restore(
    checkpoint: str | Path, state: TrainState, callbacks: Sequence[Any]
) -> tuple[dict[str, float], dict[str, Any] | None, bool]:
    """Load a checkpoint into the model, optimizer, scheduler, callbacks, RNGs and ``state``."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt["total_steps"] != state.total_steps:
        raise ValueError(
            f"{checkpoint} was written by a run of {ckpt['total_steps']} steps, this run has "
            f"{state.total_steps}: use the same epochs/max_steps/data, or resume=False"
        )
    _attach_saved_masks(state.model, ckpt["model"])
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.epoch, state.batch, state.step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
    state.history = History.from_dict(ckpt["history"])
    for cb, cb_state in zip(callbacks, ckpt["callbacks"]):
        if cb_state is not None and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(cb_state)
    set_rng_state(ckpt["rng"])
    return dict(ckpt["stats"]), ckpt["epoch_rng"], bool(ckpt["finished"])


def _batches(data: Iterable[Any], start: int, epoch_rng: dict[str, Any] | None) -> Iterator[Any]:
    """The batches of the current epoch from batch index ``start`` on (mid-epoch resume)."""
    if start == 0:
        return iter(data)
    if hasattr(data, "iter_from"):  # prunekit.data batches start anywhere, cheaply
        return data.iter_from(start)
    # Any other iterable: replay the epoch's RNG so that a shuffling DataLoader draws the same
    # order, skip the batches done, then go back to the RNG state of the interrupted step.
    now = get_rng_state()
    if epoch_rng is not None:
        set_rng_state(epoch_rng)
    it = iter(data)
    for _ in range(start):
        next(it, None)
    set_rng_state(now)
    return it


def _new_stats() -> dict[str, float]:
    return {"loss_sum": 0.0, "correct": 0, "counted": 0, "n": 0, "seconds": 0.0}


def _add_stats(
    stats: dict[str, float], loss: float, logits: torch.Tensor | None, batch: Any, seconds: float
) -> None:
    size = batch_size_of(batch[0])
    stats["loss_sum"] += loss * size
    stats["n"] += size
    hits = count_correct(logits.detach(), batch[1]) if logits is not None else None
    if hits is not None:
        stats["correct"] += hits[0]
        stats["counted"] += hits[1]
    stats["seconds"] = seconds


def _record_epoch(
    state: TrainState, stats: dict[str, float], result: dict[str, Any] | None, seconds: float
) -> None:
    h = state.history
    h.train_loss.append(stats["loss_sum"] / stats["n"] if stats["n"] else math.nan)
    h.train_acc.append(stats["correct"] / stats["counted"] if stats["counted"] else None)
    h.eval_loss.append(result["loss"] if result else None)
    h.eval_acc.append(result["accuracy"] if result else None)
    h.lr.append(state.optimizer.param_groups[0]["lr"])
    h.steps.append(state.step)
    h.seconds.append(seconds)


def _call(callbacks: Sequence[Any], hook: str, state: TrainState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)


class _DeferredInterrupt:
    """While checkpointing, turn Ctrl-C into a request handled at the next step boundary, so the
    checkpoint written is consistent. A second Ctrl-C interrupts at once."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.requested, self.previous = enabled, False, None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if self.enabled:
            try:
                self.previous = signal.signal(signal.SIGINT, self._handler)
            except ValueError:  # not the main thread: signals cannot be handled here
                self.enabled = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def _summary(h: History) -> list[str]:
    parts = [f"loss {h.train_loss[-1]:.4f}"]
    if h.train_acc[-1] is not None:
        parts.append(f"acc {100 * h.train_acc[-1]:.2f}%")
    if h.eval_acc[-1] is not None and not math.isnan(h.eval_acc[-1]):
        parts.append(f"eval acc {100 * h.eval_acc[-1]:.2f}%")
    if h.eval_loss[-1] is not None:
        parts.append(f"eval loss {h.eval_loss[-1]:.4f}")
    parts += [f"lr {h.lr[-1]:.2e}", f"{h.seconds[-1]:.1f} s"]
    return parts
