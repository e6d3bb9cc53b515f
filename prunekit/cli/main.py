"""`prunekit`: one program, one subcommand per job; each subcommand calls one library function.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad input, 130 interrupted.
"""

from __future__ import annotations

import sys
import warnings

from prunekit._version import __version__
from prunekit.cli import analyze, compare, export, profile, prune, report, run, sensitivity
from prunekit.cli._common import EXIT_USAGE, Parser, add_common_flags, report_error

# Subcommands in the order `prunekit --help` lists them.
COMMANDS = (run, analyze, prune, sensitivity, compare, profile, export, report)

DESCRIPTION = """\
Make trained PyTorch models smaller and faster by pruning, and prove what it gained.

MODEL is a spec (vgg, lenet5, resnet20, torchvision:resnet18, timm:resnet50, hf:<config or dir>,
path/to/file.py:build_fn) or a directory saved by prunekit (a `prune --out` or `run` directory)."""

EXAMPLES = """\
examples:
  prunekit run                                     # the built-in job: VGG on Fashion-MNIST
  prunekit analyze torchvision:resnet18 --input-shape 1,3,224,224
  prunekit prune torchvision:resnet18 --input-shape 1,3,224,224 --ratio 0.5 --out runs/r18
  prunekit prune torchvision:resnet18 --input-shape 1,3,224,224 --target-macs 0.25 --out runs/r18q
  prunekit sensitivity lenet5 --data fashion-mnist --batches 4   # per-group pruning sensitivity
  prunekit compare lenet5 --data fashion-mnist --budgets 0.5 0.25   # criteria x scopes, Pareto
  prunekit profile runs/r18
  prunekit export runs/r18 --format onnx           # runs/r18/model.onnx, verified with ONNX Runtime
  prunekit report runs/r18                         # HTML report with plots

'prunekit COMMAND --help' shows the options and examples of each command.
"""


def build_parser() -> Parser:
    parser = Parser(
        prog="prunekit",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"prunekit {__version__}")
    add_common_flags(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        sub = module.add_parser(subparsers)
        sub.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return int(args.func(args) or 0)
    except SystemExit as exc:  # argparse: --help / --version (0) and usage errors (2)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    except BaseException as err:  # noqa: BLE001 - every failure becomes one line and an exit code
        return report_error(err, args)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning for the user, not for a developer: no source file and line."""
    print(f"warning: {message}", file=file or sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
