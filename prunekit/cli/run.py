"""`prunekit run [RECIPE]`: the whole pipeline from a recipe (prunekit.recipes.run_recipe)."""

from __future__ import annotations

import argparse

from prunekit.cli._common import add_subparser, print_json, progress_enabled, stdout_console

EXAMPLES = """\
  prunekit run                              # the built-in default job (VGG on Fashion-MNIST)
  prunekit run default --out runs/first     # the same, into a chosen directory
  prunekit run my-recipe.yaml               # your own recipe (start from the default:
                                            #   prunekit run --show default > my-recipe.yaml)
  prunekit run --set prune.target.macs=0.3 --set finetune.epochs=2
  prunekit run --resume runs/default-20250101-120000   # continue after a crash or Ctrl-C
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_subparser(
        subparsers,
        "run",
        help="run a whole train -> prune -> fine-tune -> evaluate job from a recipe",
        description=(
            "Run a recipe end to end: train the dense model (or reuse it from the cache), evaluate\n"
            "and profile it, prune it, fine-tune, evaluate and profile again, and write a run\n"
            "directory with the pruned model, report.json and the resolved recipe.yaml.\n"
            "RECIPE is a built-in name (default) or a path to a .yaml file; none means 'default'."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument(
        "recipe", nargs="?", metavar="RECIPE", help="built-in name or .yaml path (default: default)"
    )
    parser.add_argument(
        "--out", metavar="DIR", help="run directory (default: runs/<recipe name>-<timestamp>)"
    )
    parser.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR with its recipe.yaml"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="extend",
        nargs="+",
        default=[],
        help="override recipe values by dotted key, e.g. --set train.epochs=1 prune.ratio=0.3",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="allow a non-empty --out directory"
    )
    parser.add_argument(
        "--show", action="store_true", help="print the resolved recipe as YAML and exit"
    )
    parser.add_argument(
        "--json", action="store_true", help="print report.json instead of the table"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from prunekit.recipes import load_recipe, run_recipe

    if args.resume is not None and (args.recipe or args.out or args.overrides):
        raise ValueError(
            "--resume DIR continues DIR with its own recipe.yaml: drop RECIPE, --out and --set"
        )
    recipe = None
    if args.resume is not None and args.show:
        from pathlib import Path

        from prunekit.recipes import Recipe

        path = Path(args.resume) / "recipe.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{args.resume} is not a prunekit run directory (no recipe.yaml in it)"
            )
        print(Recipe.from_yaml(path).to_yaml(), end="")
        return 0
    if args.resume is None:
        recipe = load_recipe(args.recipe).with_overrides(args.overrides)
        if args.show:
            print(recipe.to_yaml(), end="")
            return 0
    from prunekit.train import distributed

    distributed.init_from_env()  # under torchrun: join the process group (DDP fine-tuning)
    try:
        result = run_recipe(
            recipe,
            out=args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=progress_enabled(args) and distributed.is_main(),
        )
        main_rank = distributed.is_main()
    finally:
        distributed.shutdown()
    if not main_rank:  # rank 0 reports for everyone
        return 0
    if args.json:
        print_json(result.report)
    else:
        from prunekit.report import print_summary

        print_summary(result.report, stdout_console())
    return 0
