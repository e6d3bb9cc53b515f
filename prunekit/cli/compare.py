"""`prunekit compare MODEL --data NAME`: a grid of criteria x scopes x budgets, Pareto front."""

from __future__ import annotations

import argparse

from prunekit.cli import _common as c

EXAMPLES = """\
  prunekit compare runs/default --data fashion-mnist
  prunekit compare vgg --data fashion-mnist --criteria l2 fpgm taylor --scopes local global \\
      --budgets 0.5 0.25 --out runs/compare
  prunekit compare lenet5 --data fashion-mnist --budgets 0.5 --json > grid.json
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = c.add_subparser(
        subparsers,
        "compare",
        help="prune with a grid of criteria, scopes and MACs budgets; accuracy-vs-MACs front",
        description=(
            "Prune a copy of MODEL for every criterion x scope x MACs budget, recalibrate its\n"
            "BatchNorms on training batches of --data, measure accuracy on its test batches, and\n"
            "mark the configurations on the accuracy-vs-MACs Pareto front."
        ),
        examples=EXAMPLES,
    )
    c.add_model_flags(parser, data_required=True)
    parser.add_argument(
        "--criteria",
        nargs="+",
        default=["l2", "fpgm", "taylor"],
        metavar="NAME",
        help="importance criteria (default: l2 fpgm taylor)",
    )
    parser.add_argument(
        "--scopes",
        nargs="+",
        choices=["local", "global", "auto"],
        default=["local", "global"],
        help="scopes (default: local global)",
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=c.fraction_kept,
        default=[0.5, 0.25],
        metavar="F",
        help="fractions of MACs kept (default: 0.5 0.25)",
    )
    parser.add_argument(
        "--batches",
        type=c.positive_int,
        default=4,
        metavar="N",
        help="calibration and evaluation batches (default: 4)",
    )
    c.add_output_flags(parser, writes="compare.json and compare.png")
    return parser


def run(args: argparse.Namespace) -> int:
    from prunekit.recipes.tasks import compare_to_dir

    result = compare_to_dir(
        args.model,
        data=args.data,
        criteria=tuple(args.criteria),
        scopes=tuple(args.scopes),
        budgets=tuple(args.budgets),
        out=args.out,
        input_shape=args.input_shape,
        data_root=args.data_root,
        batches=args.batches,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=c.progress_enabled(args),
    )
    if args.json:
        c.print_json(result.to_dict())
    else:
        print(result.table())
    return 0
