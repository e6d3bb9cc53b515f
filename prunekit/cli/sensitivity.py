"""`prunekit sensitivity MODEL --data NAME`: prune each group alone, table + plot (prunekit.sensitivity)."""

from __future__ import annotations

import argparse

from prunekit.cli import _common as c

EXAMPLES = """\
  prunekit sensitivity runs/default --data fashion-mnist          # a trained, saved model
  prunekit sensitivity vgg --data fashion-mnist --ratios 0.3 0.6 --batches 8 --out runs/sens
  prunekit sensitivity lenet5 --data fashion-mnist --metric loss --json > sensitivity.json
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = c.add_subparser(
        subparsers,
        "sensitivity",
        help="prune each group of channels alone at several ratios and measure the metric drop",
        description=(
            "Prune every group of coupled channels of MODEL alone, at each ratio, and measure the\n"
            "metric on the first test batches of --data (Li et al. 2017). The model is restored\n"
            "after each measurement. Prints the groups from the most to the least sensitive."
        ),
        examples=EXAMPLES,
    )
    c.add_model_flags(parser, data_required=True)
    parser.add_argument(
        "--ratios",
        nargs="+",
        type=c.ratio,
        default=[0.25, 0.5, 0.75],
        metavar="R",
        help="fractions of each group's channels removed (default: 0.25 0.5 0.75)",
    )
    parser.add_argument(
        "--batches",
        type=c.positive_int,
        default=4,
        metavar="N",
        help="test batches to evaluate on (default: 4)",
    )
    parser.add_argument(
        "--importance", default="l2", help="criterion choosing the channels (default: l2)"
    )
    parser.add_argument(
        "--metric",
        choices=["accuracy", "loss"],
        default="accuracy",
        help="what to measure (default: accuracy)",
    )
    c.add_output_flags(parser, writes="sensitivity.json and sensitivity.png")
    return parser


def run(args: argparse.Namespace) -> int:
    from prunekit.recipes.tasks import sensitivity_to_dir

    result = sensitivity_to_dir(
        args.model,
        data=args.data,
        out=args.out,
        input_shape=args.input_shape,
        data_root=args.data_root,
        batches=args.batches,
        ratios=tuple(args.ratios),
        importance=args.importance,
        metric=args.metric,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=c.progress_enabled(args),
    )
    if args.json:
        c.print_json(result.to_dict())
    else:
        print(result.table())
    return 0
