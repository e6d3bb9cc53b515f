"""`prunekit prune MODEL ...`: structured (prunekit.prune) or unstructured (prunekit.sparsify;
prunekit.prune_layerwise for sparsegpt and --data text) pruning with flags mirroring the API."""

from __future__ import annotations

import argparse

from prunekit.cli import _common as c

EXAMPLES = """\
  prunekit prune torchvision:resnet18 --input-shape 1,3,224,224 --ratio 0.5 --importance l2 --out runs/r18
  prunekit prune torchvision:resnet18 --input-shape 1,3,224,224 --target-macs 0.25 --out runs/r18q
  prunekit prune vgg --ratio 0.3 --scope global --ignore 'classifier.*' --round-to 8 --out runs/vgg30
  prunekit prune runs/default --target-macs 0.25 --scope auto --data fashion-mnist --out runs/auto4x
  prunekit prune lenet5 --ratio 0.5 --importance taylor --data fashion-mnist --out runs/l5
  prunekit prune runs/default --target-accuracy-drop 0.5 --data fashion-mnist --out runs/acc
  prunekit prune lenet300 --sparsity 0.9 --out runs/l300-90       # weights: magnitude, global
  prunekit prune lenet300 --pattern 2:4 --out runs/l300-24             # 2 of every 4 weights
  prunekit prune hf:path/to/llm --sparsity 0.5 --importance sparsegpt --data text --out runs/llm50
                                             # a saved transformers LM, layer by layer (SparseGPT)
  prunekit profile runs/r18                  # then measure the saved result
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = c.add_subparser(
        subparsers,
        "prune",
        help="prune channels structurally and save the smaller model",
        description=(
            "Remove whole channels / neurons / heads (structured pruning), verify that the pruned\n"
            "model computes the same function with those channels deleted, and save it with its\n"
            "plan to --out (loadable with prunekit.load, usable by every other command).\n"
            "Give --ratio (fraction of channels REMOVED in each group) or one --target-* (fraction\n"
            "of the cost KEPT). With --sparsity / --pattern it zeroes individual weights instead\n"
            "(unstructured, N:M or block), keeping them zero with masks saved alongside."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument("model", metavar="MODEL", help="model spec or saved prunekit directory")
    parser.add_argument(
        "--input-shape",
        type=c.input_shape,
        metavar="SHAPE",
        help="example input shape, batch first, e.g. 1,3,224,224 (default: the model's)",
    )
    goal = parser.add_mutually_exclusive_group()  # exactly one, or --pattern: checked later
    goal.add_argument(
        "--ratio",
        type=c.ratio,
        metavar="R",
        help="fraction of channels removed per group, in (0, 1)",
    )
    goal.add_argument(
        "--target-macs",
        type=c.fraction_kept,
        metavar="F",
        help="fraction of the MACs kept, in (0, 1]",
    )
    goal.add_argument(
        "--target-params", type=c.fraction_kept, metavar="F", help="fraction of the parameters kept"
    )
    goal.add_argument(
        "--target-latency", type=c.fraction_kept, metavar="F", help="fraction of the latency kept"
    )
    goal.add_argument(
        "--target-accuracy-drop",
        type=c.points,
        metavar="D",
        help="prune as far as the accuracy stays within D points of the original (needs --data;"
        " measured on --eval-batches of its test split after BatchNorm recalibration)",
    )
    goal.add_argument(
        "--sparsity",
        type=c.sparsity,
        metavar="S",
        help="fraction of the weights zeroed (unstructured / block pruning), in (0, 1)",
    )
    parser.add_argument(
        "--pattern",
        default="unstructured",
        metavar="P",
        help="weight pattern: unstructured (default with --sparsity), N:M such as 2:4, or "
        "blockRxC such as block4x4",
    )
    parser.add_argument(
        "--importance",
        metavar="NAME",
        help="criterion: l1, l2, taylor, fpgm, bn_scale, ... (default: l2); with --sparsity: "
        "magnitude (default), wanda, sparsegpt or movement. sparsegpt, and magnitude or wanda "
        "with --data text, prune layer by layer; movement estimates its scores from one gradient "
        "step on a labelled --data set (e.g. fashion-mnist) and does not take --data text",
    )
    parser.add_argument(
        "--scope",
        choices=("local", "global", "auto", "std", "lamp", "erk"),
        help="channels: within each group (local, the default), across groups (global), or "
        "per-group ratios from measured sensitivity for a --target-* (auto; needs --data); "
        "weights: global (default; local for wanda), local, std, lamp, erk (none when layer by "
        "layer)",
    )
    parser.add_argument(
        "--ignore",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="layer names or globs whose output channels are kept",
    )
    parser.add_argument(
        "--override",
        dest="overrides",
        nargs="+",
        action="extend",
        type=c.name_ratio,
        default=[],
        metavar="NAME=RATIO",
        help="layer names or globs whose output channels lose RATIO instead, e.g. "
        "'features.0=0.2' (last match wins)",
    )
    parser.add_argument(
        "--round-to", type=c.positive_int, metavar="N", help="keep channel counts multiples of N"
    )
    parser.add_argument(
        "--data",
        metavar="NAME",
        help="calibration data for data-driven criteria: fashion-mnist, digits, mnist1d, "
        "imagefolder, or text (token windows for language models: the Debian fortunes prose or "
        "--data-root DIR of .txt files, read with the tokenizer saved next to an hf: model)",
    )
    parser.add_argument(
        "--data-root", metavar="DIR", help="where the data set lives (default: $PRUNEKIT_DATA)"
    )
    parser.add_argument(
        "--calibration-batches",
        type=c.non_negative_int,
        default=4,
        metavar="N",
        help="number of calibration batches (default: 4)",
    )
    parser.add_argument(
        "--eval-batches",
        type=c.positive_int,
        default=8,
        metavar="N",
        help="test batches --target-accuracy-drop measures accuracy on (default: 8)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the verification of the pruned model (not recommended)",
    )
    parser.add_argument(
        "--latency", action="store_true", help="also measure latency before and after"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the example inputs and model init"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="directory to save the pruned model into"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --out directory"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _target(args: argparse.Namespace) -> dict[str, float] | None:
    for key in ("macs", "params", "latency", "accuracy_drop"):
        value = getattr(args, f"target_{key}")
        if value is not None:
            return {key: value}
    return None


def run(args: argparse.Namespace) -> int:
    from prunekit.recipes.tasks import prune_to_dir

    summary = prune_to_dir(
        args.model,
        out=args.out,
        input_shape=args.input_shape,
        ratio=args.ratio,
        target=_target(args),
        sparsity=args.sparsity,
        pattern=args.pattern,
        importance=args.importance,
        scope=args.scope,
        ignore=args.ignore,
        overrides=dict(args.overrides),
        round_to=args.round_to,
        data=args.data,
        data_root=args.data_root,
        calibration_batches=args.calibration_batches,
        eval_batches=args.eval_batches,
        verify=args.verify,
        latency=args.latency,
        overwrite=args.overwrite,
        seed=args.seed,
        progress=c.progress_enabled(args),
    )
    if args.json:
        c.print_json(summary)
        return 0
    from prunekit.report import print_summary, report_from_prune_summary

    print_summary(report_from_prune_summary(summary), c.stdout_console())
    return 0
