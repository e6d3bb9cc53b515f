"""Compare pruning configurations: a grid of criteria x scopes x MACs budgets, each pruned on a
copy, recovered cheaply and evaluated, with the accuracy-vs-MACs Pareto front marked.

>>> import prunekit as pk
>>> grid = pk.compare(model, x, data, criteria=["l2", "fpgm"], budgets=[0.5, 0.25])  # doctest: +SKIP
>>> print(grid.table()); grid.plot("pareto.png")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunekit._copy import deep_copy

__all__ = ["compare", "Comparison", "ComparisonRow"]


@dataclass
class ComparisonRow:
    """One configuration: what was asked, the MACs it kept, the accuracy it reached."""

    importance: str
    scope: str
    budget: float  # fraction of MACs kept, as asked
    macs_kept: float  # as measured on the pruned model
    params_kept: float
    accuracy: float
    pareto: bool = False


@dataclass
class Comparison:
    """The grid's rows and the unpruned model's accuracy; `pareto` marks the front."""

    baseline_accuracy: float
    rows: list[ComparisonRow] = field(default_factory=list)
    recovery: str = "bn"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def table(self) -> str:
        head = f"{'importance':16s} {'scope':7s} {'budget':>7s} {'MACs kept':>9s} {'accuracy':>9s}"
        lines = [f"unpruned accuracy: {self.baseline_accuracy:.4f}", head, "-" * (len(head) + 7)]
        for r in sorted(self.rows, key=lambda r: (r.budget, -r.accuracy)):
            mark = "  *front" if r.pareto else ""
            lines.append(
                f"{r.importance:16s} {r.scope:7s} {r.budget:>7.3f} {r.macs_kept:>9.3f} "
                f"{r.accuracy:>9.4f}{mark}"
            )
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """Accuracy vs MACs kept, one marker per (importance, scope), the front as a line."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        configs = sorted({(r.importance, r.scope) for r in self.rows})
        for importance, scope in configs:
            rows = [r for r in self.rows if (r.importance, r.scope) == (importance, scope)]
            ax.scatter(
                [r.macs_kept for r in rows],
                [r.accuracy for r in rows],
                label=f"{importance} / {scope}",
                s=28,
            )
        front = sorted((r for r in self.rows if r.pareto), key=lambda r: r.macs_kept)
        ax.plot(
            [r.macs_kept for r in front],
            [r.accuracy for r in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        ax.axhline(self.baseline_accuracy, color="grey", lw=0.8, ls=":", label="unpruned")
        ax.set_xlabel("fraction of MACs kept")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def compare(
    model: nn.Module,
    example_inputs: Any,
    data: Iterable[Any],
    *,
    criteria: Sequence[str] = ("l2", "fpgm", "taylor"),
    scopes: Sequence[str] = ("local", "global"),
    budgets: Sequence[float] = (0.5, 0.25),
    eval_data: Iterable[Any] | None = None,
    recover: bool = True,
    progress: bool = True,
) -> Comparison:
    """Prune a copy of `model` for every (criterion, scope, MACs budget), recalibrate its
    BatchNorms on `data` (`recover`), and measure accuracy on `eval_data` (default `data`).

    `data` are ``(inputs, targets)`` batches (materialise a DataLoader's first few into a list:
    it is iterated once per configuration). The model itself is never changed.
    """
    from prunekit.metrics import profile
    from prunekit.structured.api import prune
    from prunekit.structured.recovery import recalibrate_bn, tracked_norms
    from prunekit.structured.sensitivity import _Progress
    from prunekit.train import evaluate

    data = list(data)
    evaluation = list(eval_data) if eval_data is not None else data
    if not data or not evaluation:
        raise ValueError("compare needs data: a non-empty list of (inputs, targets) batches")
    _check_grid(criteria, scopes, budgets)
    baseline = float(evaluate(model, evaluation)["accuracy"])
    dense = profile(model, example_inputs, latency=False, memory=False, size=False)
    jobs = [(c, s, b) for c in criteria for s in scopes for b in budgets]
    rows: list[ComparisonRow] = []
    with _Progress(progress, len(jobs)) as advance:
        for importance, scope, budget in jobs:
            twin = deep_copy(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruned = prune(
                    twin,
                    example_inputs,
                    target={"macs": budget},
                    importance=importance,
                    scope=scope,
                    data=data,
                ).model
            if recover and tracked_norms(pruned):
                recalibrate_bn(pruned, data)
            after = profile(pruned, example_inputs, latency=False, memory=False, size=False)
            rows.append(
                ComparisonRow(
                    importance,
                    scope,
                    budget,
                    after.macs / dense.macs,
                    after.params / dense.params,
                    float(evaluate(pruned, evaluation)["accuracy"]),
                )
            )
            advance()
    _mark_front(rows)
    return Comparison(baseline, rows, "bn" if recover else "none")


def _check_grid(criteria: Sequence[str], scopes: Sequence[str], budgets: Sequence[float]) -> None:
    from prunekit import importance as registry

    for name in criteria:
        registry.get(name)  # unknown names fail here, before any work
    for scope in scopes:
        if scope not in ("local", "global", "auto"):
            raise ValueError(f"unknown scope {scope!r}; use 'local', 'global' or 'auto'")
    if not budgets or any(not 0 < float(b) <= 1 for b in budgets):
        raise ValueError(f"budgets are fractions of MACs kept in (0, 1], got {list(budgets)!r}")


def _mark_front(rows: list[ComparisonRow]) -> None:
    """A row is on the front when no other row keeps fewer (or equal) MACs with higher (or
    equal) accuracy, strictly better in one of them."""
    for r in rows:
        r.pareto = not any(
            o is not r
            and o.macs_kept <= r.macs_kept
            and o.accuracy >= r.accuracy
            and (o.macs_kept < r.macs_kept or o.accuracy > r.accuracy)
            for o in rows
        )
