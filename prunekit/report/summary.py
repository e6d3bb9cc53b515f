"""Turn a run's report.json into a before / after / change table (rich, plain text or rows).

>>> from prunekit.report import load_report, summary_text
>>> print(summary_text(load_report("runs/default-20250101-120000")))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]  # metric, before, after, change


def load_report(path: str | Path) -> dict[str, Any]:
    """Read report.json from a file or a run directory (`prunekit run`), or build the report of a
    directory saved by `prunekit prune` from the summary stored in its prunekit.json."""
    path = Path(path)
    if path.is_dir():
        if not (path / "report.json").is_file() and (path / "prunekit.json").is_file():
            summary = _read_json(path / "prunekit.json").get("metadata", {}).get("prune")
            if isinstance(summary, dict) and "before" in summary:
                return report_from_prune_summary({**summary, "out": str(path)})
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no report found at {path} (is this a finished prunekit run directory?)"
        )
    return _read_json(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def report_from_prune_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The report shape (dense/pruned/prune/timings) of a `prune_to_dir` summary."""
    keys = (
        "importance",
        "ratio",
        "target",
        "sparsity",
        "pattern",
        "scope",
        "verified",
        "max_error",
    )
    engine = summary.get("report") or {}
    prune = {k: summary.get(k) for k in keys}
    if isinstance(engine.get("groups"), int):
        prune.update(groups=engine["groups"], groups_pruned=engine.get("pruned_groups", 0))
    reached = engine.get("target") or {}
    if reached.get("target") == "accuracy_drop":
        prune["accuracy"] = {k: reached.get(k) for k in ("baseline_accuracy", "accuracy")}
    return {
        "recipe": "prune",
        "model": {"spec": summary.get("model"), "input_shape": summary.get("input_shape")},
        "dense": summary.get("before"),
        "pruned": summary.get("after"),
        "prune": prune,
        "timings": summary.get("timings") or {},
        "run_dir": summary.get("out"),
    }


# --- formatting helpers -------------------------------------------------------------------------


def human_count(n: float | None) -> str:
    """1234567 -> '1.23M'."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms"


def _mj(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} mJ"


def _reduction(before: float | None, after: float | None) -> str:
    """Cost change: '-48.2% (1.93x smaller)'."""
    if before is None or after is None:
        return "-"
    if before == 0:
        return "="
    change = after / before - 1
    if abs(change) < 5e-4:
        return "="
    if after > 0 and after < before:
        return f"{100 * change:+.1f}% ({before / after:.2f}x)"
    return f"{100 * change:+.1f}%"


def _speedup(before: float | None, after: float | None) -> str:
    if not before or not after:
        return "-"
    ratio = before / after
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _points(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{100 * (after - before):+.2f} pts"


def _delta(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{after - before:+.4f}"


# (label, key, value formatter, change formatter)
_METRICS: list[tuple[str, str, Callable[[Any], str], Callable[[Any, Any], str]]] = [
    ("accuracy", "accuracy", _pct, _points),
    ("loss", "loss", lambda v: "-" if v is None else f"{v:.4f}", _delta),
    ("params", "params", human_count, _reduction),
    ("nonzero params", "nonzero_params", human_count, _reduction),
    ("MACs", "macs", human_count, _reduction),
    ("nonzero MACs", "nonzero_macs", human_count, _reduction),
    ("latency", "latency_ms", _ms, _speedup),
    ("peak memory", "peak_memory_bytes", human_bytes, _reduction),
    ("size on disk", "size_bytes", human_bytes, _reduction),
    ("size compressed", "size_compressed_bytes", human_bytes, _reduction),
    ("energy (estimate)", "energy_mj", _mj, _reduction),
]


def comparison_rows(report: dict[str, Any]) -> list[Row]:
    """(metric, before, after, change) for each metric present in the dense or pruned results."""
    dense = report.get("dense") or {}
    pruned = report.get("pruned") or {}
    env = report.get("environment") or {}
    rows: list[Row] = []
    for label, key, fmt, change in _METRICS:
        before, after = dense.get(key), pruned.get(key)
        if before is None and after is None:
            continue
        dense_key = {"nonzero_params": "params", "nonzero_macs": "macs"}.get(key)
        if dense_key and before == dense.get(dense_key) and after == pruned.get(dense_key):
            continue  # dense weights: the same as params / MACs
        if key == "latency_ms":
            batch = dense.get("batch_size") or env.get("batch_size")
            threads = dense.get("threads") or env.get("threads")
            extra = ", ".join(
                x
                for x in (
                    f"batch {batch}" if batch else "",
                    f"{threads} threads" if threads else "",
                )
                if x
            )
            label = f"latency ({extra})" if extra else label
        rows.append(
            (
                label,
                fmt(before),
                fmt(after) if pruned else "-",
                change(before, after) if pruned else "-",
            )
        )
    return rows


# The size on disk is that of the save (prunekit.metrics.size), which holds the masks: say so,
# or a sparsified model reads as larger than its dense original for no stated reason.
_MASKS_NOTE = "masks saved with the model (counted in its size on disk)"


def _notes(report: dict[str, Any]) -> list[str]:
    notes = []
    prune = report.get("prune")
    if prune:
        if prune.get("sparsity") is not None:  # weights zeroed: the architecture is unchanged
            goal = f"sparsity {prune['sparsity']:.3f} ({prune.get('pattern', 'unstructured')})"
        elif prune.get("ratio") is not None:
            goal = f"ratio {prune['ratio']}"
        else:
            goal = f"target {prune.get('target')}"
        err = prune.get("max_error")
        verdict = "verified" if prune.get("verified") else "NOT verified"
        if prune.get("sparsity") is not None:
            verdict = f"zeros kept by {_MASKS_NOTE}"
        err_text = f" (max error {err:.1e})" if isinstance(err, int | float) else ""
        groups = ""
        if prune.get("groups") is not None:
            groups = f", {prune.get('groups_pruned', 0)} of {prune['groups']} groups pruned"
        notes.append(
            f"pruning: {prune.get('importance')} {goal}, scope {prune.get('scope')}{groups}; {verdict}{err_text}"
        )
        accuracy = prune.get("accuracy") or {}
        if accuracy.get("accuracy") is not None:
            notes.append(
                f"accuracy on the evaluation batches: {accuracy['baseline_accuracy']:.2%} → "
                f"{accuracy['accuracy']:.2%} after BatchNorm recalibration, before fine-tuning"
            )
    sparse = report.get("sparsify")
    if sparse:
        notes.append(
            f"sparsity: {sparse.get('sparsity', 0):.1%} of the targeted weights are zero "
            f"({sparse.get('pattern')}, {sparse.get('importance')}, scope {sparse.get('scope')}, "
            f"{sparse.get('schedule')}); zeros kept by {_MASKS_NOTE}"
        )
    timings = report.get("timings") or {}
    if timings:
        parts = [
            f"{k} {v:.1f}s"
            for k, v in timings.items()
            if k != "total" and isinstance(v, int | float)
        ]
        total = timings.get("total")
        notes.append(
            "time: " + ", ".join(parts) + (f"; total {total:.1f}s" if total is not None else "")
        )
    env = report.get("environment") or {}
    if env:
        keys = ("prunekit", "torch", "python", "machine", "threads", "seed")
        parts = [f"{k} {env[k]}" for k in keys if env.get(k) is not None]
        if parts:
            notes.append("environment: " + ", ".join(parts))
    if report.get("run_dir"):
        notes.append(f"saved in: {report['run_dir']}")
    return notes


def _title(report: dict[str, Any]) -> str:
    model = (report.get("model") or {}).get("spec", "model")
    data = (report.get("data") or {}).get("name")
    return f"{report.get('recipe', 'run')}: {model}" + (f" on {data}" if data else "")


def summary_table(report: dict[str, Any]):
    """A rich Table: metric | before (dense) | after (pruned) | change."""
    from rich.table import Table

    table = Table(title=_title(report), title_justify="left")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    for row in comparison_rows(report):
        table.add_row(*row)
    return table


def print_summary(report: dict[str, Any], console=None) -> None:
    """Print the table and the notes (verification, timings, environment) with rich."""
    from rich.console import Console

    console = console or Console()
    console.print(summary_table(report))
    for note in _notes(report):
        console.print(note, highlight=False, markup=False, soft_wrap=True)


def summary_text(report: dict[str, Any]) -> str:
    """The same summary as plain text (no colours), for logs and files."""
    rows = [("metric", "before", "after", "change"), *comparison_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [_title(report)]
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += _notes(report)
    return "\n".join(lines) + "\n"
