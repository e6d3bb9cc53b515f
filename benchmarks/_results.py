"""Shared by the benchmark scripts: resumable JSON results and README tables between markers."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

README = Path(__file__).parent.parent / "README.md"


def load(path: Path) -> dict[str, Any]:
    """The stored results, or an empty set of rows."""
    return json.loads(path.read_text()) if path.is_file() else {"rows": {}}


def of_dense(path: Path, dense_accuracy: float, *, fresh: bool = False) -> dict[str, Any]:
    """The stored results if they were measured on this dense model (judged by its test accuracy,
    which every results file records), an empty set with `fresh`; exits with a clear message
    rather than mixing rows of two dense models (a cache wiped or retrained on another machine)."""
    if fresh:
        return {"rows": {}}
    results = load(path)
    stored = results.get("dense_accuracy")
    if results.get("rows") and stored is not None and abs(stored - dense_accuracy) > 1e-9:
        sys.exit(
            f"{path} holds rows measured on a dense model at {stored:.2%}; this one is at "
            f"{dense_accuracy:.2%} (retrained?). Rerun with --fresh to recompute every row."
        )
    return results


def store(path: Path, results: dict[str, Any]) -> None:
    """Write atomically, so an interrupted sweep never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def write_readme(marker: str, text: str) -> None:
    """Replace what stands between `<!-- marker -->` and `<!-- /marker -->` in README.md."""
    begin, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    readme = README.read_text()
    if begin not in readme:
        sys.exit(f"README.md has no {begin} marker")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def show(text: str, *, readme_marker: str | None = None) -> None:
    """Print a results table and, with `readme_marker`, put it in README.md between its markers."""
    print(text)
    if readme_marker is not None:
        write_readme(readme_marker, text)


def accuracy_cell(values: list[float]) -> str:
    """`mean ± stdev (n)` in percent; the spread only when there are several values."""
    spread = f" ± {statistics.stdev(values):.2%}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2%}{spread} ({len(values)})"
