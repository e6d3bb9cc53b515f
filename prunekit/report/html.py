"""A self-contained HTML report of a run (plots embedded as PNG), from its report.json.

>>> from prunekit.report import write_html
>>> write_html("runs/default-20250101-120000")   # doctest: +SKIP
PosixPath('runs/default-20250101-120000/report.html')
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from prunekit.report.summary import _notes, _title, comparison_rows, load_report

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.ok { color: #087f23; font-weight: bold; } .bad { color: #b00020; font-weight: bold; }
.note { color: #555; font-size: 0.9em; } img { max-width: 100%; }
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _cost_plot(report: dict[str, Any]) -> str | None:
    """Pruned / dense for each cost: one bar per metric, 1.0 = dense."""
    dense, pruned = report.get("dense") or {}, report.get("pruned") or {}
    labels, values = [], []
    for label, key in (
        ("params", "params"),
        ("MACs", "macs"),
        ("nonzero MACs", "nonzero_macs"),
        ("latency", "latency_ms"),
        ("peak memory", "peak_memory_bytes"),
        ("size", "size_bytes"),
        ("energy", "energy_mj"),
    ):
        if key == "nonzero_macs" and pruned.get(key) == pruned.get("macs"):
            continue  # dense weights: the MACs bar says it
        if dense.get(key) and pruned.get(key) is not None:
            labels.append(label)
            values.append(pruned[key] / dense[key])
    if not labels:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3))
    bars = ax.bar(labels, values, color="#3b7dd8")
    ax.axhline(1.0, color="#888", linewidth=1, linestyle="--")
    ax.set_ylabel("pruned / dense")
    ax.set_ylim(0, max(1.1, max(values) * 1.15))
    for bar, v in zip(bars, values):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            v + 0.02,
            f"{v:.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_title("cost kept by the pruned model (dense = 1)")
    return _png(fig)


def _layers_plot(report: dict[str, Any], top: int = 20) -> str | None:
    """MACs per layer, dense vs pruned (nonzero MACs: a sparse layer's are its density's share),
    for the costliest layers."""
    dense = (report.get("dense") or {}).get("layers") or {}
    pruned = (report.get("pruned") or {}).get("layers") or {}

    def kept(info: dict[str, Any]) -> float:
        return info.get("nonzero_macs", info.get("macs", 0))

    rows = [
        (name, info.get("macs", 0), kept(pruned.get(name) or {}))
        for name, info in dense.items()
        if name
    ]
    rows = [r for r in rows if r[1]]
    if not rows:
        return None
    rows.sort(key=lambda r: -r[1])
    rows = rows[:top][::-1]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(rows) + 1))
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r[1] for r in rows], height=0.4, label="dense", color="#bbb")
    ax.barh([i - 0.2 for i in y], [r[2] for r in rows], height=0.4, label="pruned", color="#3b7dd8")
    ax.set_yticks(list(y), [r[0] for r in rows], fontsize=7)
    ax.set_xlabel("MACs (nonzero MACs of the pruned model)")
    ax.legend(fontsize=8)
    ax.set_title(f"MACs per layer (the {len(rows)} costliest)")
    return _png(fig)


def _part_of_whole_plot(
    rows: list[tuple[str, float, float]], legend: tuple[str, str], xlabel: str, title: str
) -> str:
    """Horizontal bars, first row on top: each row's whole (grey) and its part (blue)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 0.25 * len(rows) + 1))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r[1] for r in rows], color="#ddd", label=legend[0])
    ax.barh(y, [r[2] for r in rows], color="#3b7dd8", label=legend[1])
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _png(fig)


def _sparsity_plot(report: dict[str, Any], top: int = 40) -> str | None:
    """Fraction of zeros per weight after unstructured pruning (Han et al.'s Table 1)."""
    layers = ((report.get("sparsify") or {}).get("layers") or {}).items()
    rows = [(name, 1.0, float(value)) for name, value in layers][:top]
    if not rows:
        return None
    return _part_of_whole_plot(
        rows, ("weights", "zeros"), "fraction of zeros", "sparsity per layer"
    )


def _groups_plot(groups: list[dict[str, Any]], top: int = 40) -> str | None:
    """Channels kept per group of coupled channels."""
    rows = [(g["key"], g["size"], len(g.get("keep", []))) for g in groups if g.get("size")][:top]
    if not rows:
        return None
    return _part_of_whole_plot(rows, ("original", "kept"), "channels", "channels kept per group")


def _curves(history: Any) -> dict[str, list[float]]:
    """Per-epoch series from a training history (a dict of lists, or a list of epoch dicts)."""
    if isinstance(history, dict):
        epochs = history.get("epochs")
        if isinstance(epochs, list) and epochs and isinstance(epochs[0], dict):
            history = epochs
        else:
            return {
                k: [float(x) for x in v]
                for k, v in history.items()
                if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v)
            }
    if isinstance(history, list) and history and isinstance(history[0], dict):
        keys = [k for k, v in history[0].items() if isinstance(v, int | float) and k != "epoch"]
        return {k: [float(e.get(k, float("nan"))) for e in history] for k in keys}
    return {}


def _training_plot(stages: dict[str, Any]) -> str | None:
    series = {name: _curves(h) for name, h in stages.items() if h}
    series = {name: s for name, s in series.items() if s}
    if not series:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(series), figsize=(3.4 * len(series), 2.8), squeeze=False)
    for ax, (name, curves) in zip(axes[0], series.items()):
        for key, values in curves.items():
            if "loss" in key or "acc" in key:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return _png(fig)


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _plan_groups(run_dir: Path | None) -> list[dict[str, Any]]:
    if run_dir is None or not (run_dir / "prunekit.json").is_file():
        return []
    try:
        plan = json.loads((run_dir / "prunekit.json").read_text()).get("plan") or {}
    except (OSError, ValueError):
        return []
    return list(plan.get("groups") or [])


def render_html(report: dict[str, Any], *, run_dir: Path | None = None) -> str:
    """The report as one HTML document (no external files)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(_title(report))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(_title(report))}</h1>",
    ]
    if report.get("created"):
        parts.append(f"<p class='note'>created {html.escape(str(report['created']))}</p>")
    prune = report.get("prune") or {}
    if prune:
        ok = prune.get("verified")
        err = prune.get("max_error")
        verdict = "verified" if ok else ("NOT verified" if ok is False else "not checked")
        cls = "ok" if ok else "bad"
        err_text = (
            f" &mdash; max relative error {err:.1e} (pass at &le; 1e-4)"
            if isinstance(err, int | float)
            else ""
        )
        parts.append(f"<p>Pruned model: <span class='{cls}'>{verdict}</span>{err_text}</p>")
    parts.append("<h2>Dense vs pruned</h2>")
    parts.append(_table(comparison_rows(report), ("metric", "before", "after", "change")))
    for title, image in (
        ("Costs", _cost_plot(report)),
        ("Layers", _layers_plot(report)),
        ("Groups", _groups_plot(_plan_groups(run_dir))),
        ("Sparsity", _sparsity_plot(report)),
        ("Training", _training_plot(report.get("history") or {})),
    ):
        if image:
            parts.append(f"<h2>{title}</h2><img alt='{title}' src='{image}'>")
    timings = report.get("timings") or {}
    if timings:
        rows = [(k, f"{v:.1f} s") for k, v in timings.items() if isinstance(v, int | float)]
        parts.append("<h2>Time</h2>" + _table(rows, ("stage", "time")))
    env = report.get("environment") or {}
    if env:
        rows = [(k, v if not isinstance(v, dict | list) else json.dumps(v)) for k, v in env.items()]
        parts.append("<h2>Environment</h2>" + _table(rows, ("", "")))
    energy_note = (
        "Energy is an estimate from operation and memory-access counts (45 nm, Horowitz 2014)."
    )
    parts.append(f"<p class='note'>{energy_note}</p>")
    parts.append("<p class='note'>" + "<br>".join(html.escape(n) for n in _notes(report)) + "</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` (or `out`) for the run or saved directory `run_dir`; returns its path."""
    from prunekit.recipes._rundir import atomic_write_text

    run_dir = Path(run_dir)
    report = load_report(run_dir)
    target = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_text(target, render_html(report, run_dir=run_dir))
    return target
