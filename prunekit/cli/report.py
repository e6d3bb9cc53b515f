"""`prunekit report RUN_DIR`: the HTML report with plots (prunekit.report.write_html)."""

from __future__ import annotations

import argparse

from prunekit.cli import _common as c

EXAMPLES = """\
  prunekit report runs/default-20250101-120000        # writes runs/.../report.html
  prunekit report runs/r18 --out r18.html             # a `prunekit prune --out` directory works too
  prunekit report runs/default-20250101-120000 --text # the summary table only, no file written
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = c.add_subparser(
        subparsers,
        "report",
        help="write a self-contained HTML report (tables and plots) of a run",
        description=(
            "Read a run directory (report.json of `prunekit run`, or the summary saved by\n"
            "`prunekit prune`) and write report.html beside it: dense vs pruned table,\n"
            "verification, cost and per-layer plots, channels kept per group, training curves,\n"
            "timings and environment. Prints the summary table."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="a `prunekit run` or `prunekit prune --out` directory"
    )
    parser.add_argument(
        "--out", metavar="FILE", help="where to write the HTML (default: RUN_DIR/report.html)"
    )
    parser.add_argument("--text", action="store_true", help="print the summary only, write no file")
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON, write no file"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from prunekit.report import load_report, print_summary, write_html

    if args.json:
        c.print_json(load_report(args.run_dir))
        return 0
    if args.text:
        print_summary(load_report(args.run_dir), c.stdout_console())
        return 0
    if args.out is not None:
        import os
        from pathlib import Path

        from prunekit.recipes._rundir import check_output_dir

        if Path(args.out).is_dir() or args.out.endswith(("/", os.sep)):
            raise ValueError(
                f"--out {args.out} names a directory; give the HTML file to write, e.g. "
                f"--out {Path(args.out) / 'report.html'}"
            )
        check_output_dir(Path(args.out).parent, allow_existing=True)
    path = write_html(args.run_dir, args.out)
    console = c.stdout_console()
    print_summary(load_report(args.run_dir), console)
    console.print(f"report: {path}", soft_wrap=True)
    return 0
