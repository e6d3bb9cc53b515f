"""Progress display: a live rich bar on a terminal, one summary line per epoch in any case."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class EpochProgress:
    """Shows training progress on stderr; silent when ``enabled`` is False."""

    def __init__(self, enabled: bool, epochs: int) -> None:
        self.enabled = enabled
        self.epochs = epochs
        self.console = Console(stderr=True, soft_wrap=True, highlight=False) if enabled else None
        self.bar: Progress | None = None
        self.task: int | None = None

    def __enter__(self) -> EpochProgress:
        if self.console is not None and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}"),
                console=self.console,
                transient=True,  # the bar disappears; the epoch line stays
            )
            self.bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start_epoch(self, epoch: int, total: int | None, done: int) -> None:
        if self.bar is not None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            desc = f"epoch {epoch + 1}/{self.epochs}"
            self.task = self.bar.add_task(desc, total=total, completed=done, loss=0.0, lr=0.0)

    def step(self, loss: float, lr: float) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, loss=loss, lr=lr)

    def end_epoch(self, epoch: int, parts: list[str]) -> None:
        if self.console is not None:
            self.console.print(f"epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts))
