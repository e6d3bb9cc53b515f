"""Reports of prunekit runs: report.json -> tables (rich and plain text) and a self-contained HTML page."""

from prunekit.report.html import render_html, write_html
from prunekit.report.summary import (
    comparison_rows,
    human_bytes,
    human_count,
    load_report,
    print_summary,
    report_from_prune_summary,
    summary_table,
    summary_text,
)

__all__ = [
    "comparison_rows",
    "human_bytes",
    "human_count",
    "load_report",
    "print_summary",
    "render_html",
    "report_from_prune_summary",
    "summary_table",
    "summary_text",
    "write_html",
]
