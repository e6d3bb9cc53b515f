"""Sensitivity analysis: prune each group alone at several ratios and measure what it costs.

Li et al. (2017, "Pruning Filters for Efficient ConvNets") prune one layer at a time to see which
layers tolerate pruning; prunekit does it per group of coupled channels (a residual stream is one
group), with physical removal on the model itself, undone after each measurement. The model is
traced once, each ratio is planned once (scores are cached on the graph), and the evaluation
batches are materialised once, so the cost is one evaluation per (group, ratio).

>>> import prunekit as pk
>>> sens = pk.sensitivity(model, x, data=val_batches, ratios=(0.25, 0.5))  # doctest: +SKIP
>>> print(sens.table())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.structured.plan import Plan
from prunekit.structured.recovery import _check_data
from prunekit.structured.surgery import restore, snapshot

__all__ = ["sensitivity", "Sensitivity", "GroupSensitivity"]

Metric = Callable[[nn.Module, list[Any]], float]


@dataclass
class GroupSensitivity:
    """One group: its key, size, the layers it spans, and the metric at each ratio."""

    key: str
    size: int
    members: list[str]
    metric: dict[str, float] = field(default_factory=dict)  # str(ratio) -> metric value

    def drop(self, baseline: float, ratio: float) -> float:
        return baseline - self.metric[str(ratio)]


@dataclass
class Sensitivity:
    """What pruning each group alone costs: `baseline` metric, `ratios`, one row per group."""

    metric_name: str
    baseline: float
    ratios: list[float]
    groups: list[GroupSensitivity]
    importance: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def ranked(self, ratio: float | None = None) -> list[GroupSensitivity]:
        """Groups from the most to the least sensitive at `ratio` (default: the largest)."""
        ratio = max(self.ratios) if ratio is None else ratio
        return sorted(self.groups, key=lambda g: -g.drop(self.baseline, ratio))

    def table(self) -> str:
        """Plain-text table: per group, the metric drop at each ratio (most sensitive first)."""
        head = f"{'group':40s} {'size':>6s} " + " ".join(
            f"{f'drop@{r:g}':>10s}" for r in self.ratios
        )
        lines = [f"baseline {self.metric_name}: {self.baseline:.4f}", head, "-" * len(head)]
        for g in self.ranked():
            drops = " ".join(f"{g.drop(self.baseline, r):>10.4f}" for r in self.ratios)
            lines.append(f"{_short(g.key, 40):40s} {g.size:>6d} {drops}")
        return "\n".join(lines)

    def plot(self, path: str | Path, top: int = 12) -> Path:
        """Metric drop vs ratio for the `top` most sensitive groups, as a PNG (matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for g in self.ranked()[:top]:
            ax.plot(
                self.ratios,
                [g.drop(self.baseline, r) for r in self.ratios],
                marker="o",
                label=_short(g.key, 32),
            )
        ax.set_xlabel("fraction of the group's channels removed")
        ax.set_ylabel(f"{self.metric_name} drop")
        ax.set_title(f"Sensitivity ({self.importance}), baseline {self.baseline:.4f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def sensitivity(
    model: nn.Module,
    example_inputs: Any,
    data: Iterable[Any],
    metric: str | Metric = "accuracy",
    *,
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    importance: Any = "l2",
    batches: int | None = 4,
    calibration: Any = None,
    ignore: list[str] | None = None,
    example_kwargs: dict | None = None,
    progress: bool = True,
) -> Sensitivity:
    """Prune every group alone at each of `ratios` and measure `metric` on held-out batches.

    `data` are ``(inputs, targets)`` batches, of which the first `batches` are used (None: all).
    `metric` is ``"accuracy"`` or ``"loss"`` (reported so that higher is better: the negative
    loss), or a function ``metric(model, batches) -> float`` where higher is better. Channels are
    chosen by `importance` (data-driven criteria score on `calibration`, default `data`). The
    model is pruned physically and restored after every measurement; it is unchanged on return.
    """
    _check_data(data, batches, who="sensitivity")
    ratios = _check_ratios(ratios)
    evaluation = _take(data, batches)
    score = _metric(metric)
    from prunekit.graph import trace
    from prunekit.structured.api import plan

    graph = trace(model, example_inputs, example_kwargs)
    plans = {
        r: plan(
            model,
            example_inputs,
            ratio=r,
            importance=importance,
            data=calibration if calibration is not None else evaluation,
            ignore=ignore,
            example_kwargs=example_kwargs,
            graph=graph,
        )
        for r in ratios
    }
    baseline, groups = measure_alone(model, graph, plans, evaluation, score, progress)
    name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    label = importance if isinstance(importance, str) else type(importance).__name__
    return Sensitivity(name, baseline, list(ratios), groups, label)


def measure_alone(
    model: nn.Module,
    graph: Any,
    plans: dict[float, Plan],
    evaluation: list[Any],
    score: Metric,
    progress: bool,
) -> tuple[float, list[GroupSensitivity]]:
    """The baseline metric and, per group pruned in `plans[r]`, the metric with that group alone
    pruned as in `plans[r]`, for every ratio r. The model is restored after each measurement."""
    baseline = score(model, evaluation)
    groups = {
        g.key: GroupSensitivity(g.key, g.size, list(g.members))
        for p in plans.values()
        for g in p.pruned_groups
    }
    jobs = [(r, g) for r in plans for g in plans[r].pruned_groups]
    with _Progress(progress, len(jobs)) as advance:
        for r, group in jobs:
            alone = Plan([group], plans[r].inputs, plans[r].kwargs, dict(plans[r].meta))
            groups[group.key].metric[str(r)] = _score_pruned(model, graph, alone, evaluation, score)
            advance()
    for g in groups.values():  # a group too small to lose channels at a ratio costs nothing
        for r in plans:
            g.metric.setdefault(str(r), baseline)
    return baseline, list(groups.values())


def _score_pruned(
    model: nn.Module, graph: Any, plan: Plan, evaluation: list, score: Metric
) -> float:
    """`score` of `model` pruned by `plan` (the model is restored after). Where its code cannot
    run at those sizes (one group of several that must keep one size, a size written as a
    literal), the pruned exported graph is scored instead: the same function, as `pk.prune`'s
    fallback computes it."""
    from prunekit.structured.api import apply_plan, pruned_graph

    state = snapshot(model)
    try:
        try:
            with warnings.catch_warnings():  # about a trial model that is restored next
                warnings.simplefilter("ignore")
                apply_plan(model, plan, graph.export_args, graph=graph)
            return score(model, evaluation)
        finally:
            restore(model, state)
    except Exception:
        return score(pruned_graph(model, graph, plan), evaluation)


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    values = [float(r) for r in ratios]
    if not values or any(not 0 < r < 1 for r in values):
        raise ValueError(f"ratios must be fractions in (0, 1) of channels removed, got {ratios!r}")
    return sorted(set(values))


def _take(data: Iterable[Any], batches: int | None) -> list[Any]:
    taken = []
    for batch in data:
        taken.append(batch)
        if batches is not None and len(taken) >= batches:
            break
    if not taken:
        raise ValueError("sensitivity: data yielded no batches; pass evaluation batches")
    return taken


def _metric(metric: str | Metric) -> Metric:
    from prunekit.train import evaluate

    if callable(metric):
        return lambda model, batches: float(metric(model, batches))
    if metric == "accuracy":
        return lambda model, batches: float(evaluate(model, batches)["accuracy"])
    if metric == "loss":
        return lambda model, batches: -float(evaluate(model, batches)["loss"])
    raise ValueError(
        f"unknown metric {metric!r}: use 'accuracy', 'loss' or a function "
        "metric(model, batches) -> float (higher is better)"
    )


class _Progress:
    """A rich progress bar over the (group, ratio) evaluations, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled, total, None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        task = self.bar.add_task("sensitivity", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]
