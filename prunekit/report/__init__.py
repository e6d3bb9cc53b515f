"""Reports of prunekit runs: report.json -> tables (rich and plain text)."""

from prunekit.report.summary import (
    comparison_rows,
    human_bytes,
    human_count,
    load_report,
    print_summary,
    summary_table,
    summary_text,
)

__all__ = [
    "comparison_rows",
    "human_bytes",
    "human_count",
    "load_report",
    "print_summary",
    "summary_table",
    "summary_text",
]
