"""Shared pieces of the subcommands: argument types, consoles, error reporting and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Errors a user causes (bad input, unknown model, missing files, unwritable paths): exit 2.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, NotADirectoryError)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and a pointer to --help) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"prunekit: error: {message} (see '{self.prog} --help')\n")


HELP_FORMATTER = argparse.RawDescriptionHelpFormatter


def add_subparser(subparsers, name: str, *, help: str, description: str, examples: str):
    """A subcommand parser with the examples as epilog and the common flags."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples.rstrip() + "\n",
        formatter_class=HELP_FORMATTER,
    )
    add_common_flags(parser, suppress_defaults=True)
    return parser


def add_common_flags(parser: argparse.ArgumentParser, *, suppress_defaults: bool = False) -> None:
    # On subparsers the defaults are suppressed so that `prunekit --debug run` is not undone.
    default: Any = argparse.SUPPRESS if suppress_defaults else False
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback when the operation fails (or PRUNEKIT_DEBUG=1)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress output (results are still printed)",
    )


# --- argument types (raise ArgumentTypeError -> exit 2 with a one-line message) ----------------


def input_shape(text: str) -> tuple[int, ...]:
    from prunekit.recipes._resolve import parse_input_shape

    try:
        return parse_input_shape(text)  # type: ignore[return-value]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _fraction(text: str, meaning: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1): {meaning}; got {text}")
    return value


def ratio(text: str) -> float:
    return _fraction(text, "the fraction of channels REMOVED per group, e.g. 0.5")


def sparsity(text: str) -> float:
    return _fraction(text, "the fraction of the weights zeroed, e.g. 0.9")


def name_ratio(text: str) -> tuple[str, float]:
    """NAME=RATIO (a layer name or glob, and the fraction of its output channels removed)."""
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=RATIO, e.g. features.0=0.2; got {text!r}")
    removed = _number(value)
    if not 0 <= removed < 1:
        raise argparse.ArgumentTypeError(
            f"the ratio of {name} must be in [0, 1) (fraction of channels removed); got {value}"
        )
    return name, removed


def fraction_kept(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"must be in (0, 1]: the fraction of the cost KEPT, e.g. 0.5; got {text}"
        )
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def points(text: str) -> float:
    value = _number(text)
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(
            f"must be in (0, 100): accuracy percentage points that may be lost, e.g. 0.5; got {text}"
        )
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


# --- output ------------------------------------------------------------------------------------


def stdout_console():
    from rich.console import Console

    return Console(highlight=False)


def progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def print_json(data: Any) -> None:
    import json

    from prunekit.recipes._rundir import _json_default

    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


# --- errors ------------------------------------------------------------------------------------


def debug_enabled(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("PRUNEKIT_DEBUG", "") not in (
        "",
        "0",
    )


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.strerror}: {err.filename}"
    else:
        text = str(err) or type(err).__name__
        if isinstance(err, KeyError):  # str(KeyError) is the bare repr of the key
            text = f"missing key {text}"
    text = " ".join(text.split())
    return text


def _is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS)


def report_error(err: BaseException, args: argparse.Namespace | None) -> int:
    """Print the error as one line on stderr (traceback only when debugging); return the exit code."""
    debug = debug_enabled(args)
    notes = [" ".join(n.split()) for n in getattr(err, "__notes__", [])]
    if isinstance(err, KeyboardInterrupt):
        sys.stderr.write("prunekit: interrupted\n")
        for note in notes:
            sys.stderr.write(f"prunekit: {note}\n")
        return EXIT_INTERRUPTED
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    if _is_user_error(err):
        sys.stderr.write(f"prunekit: error: {_one_line(err)}\n")
        return EXIT_USAGE
    sys.stderr.write(f"prunekit: error: {type(err).__name__}: {_one_line(err)}\n")
    for note in notes:
        sys.stderr.write(f"prunekit: {note}\n")
    if not debug:
        sys.stderr.write("prunekit: run with --debug (or PRUNEKIT_DEBUG=1) for the traceback\n")
    return EXIT_FAILED


def add_model_flags(parser: argparse.ArgumentParser, *, data_required: bool = False) -> None:
    """MODEL, --input-shape, --data, --data-root: what a command needs to build and feed a model."""
    parser.add_argument("model", metavar="MODEL", help="model spec or saved prunekit directory")
    parser.add_argument(
        "--input-shape",
        type=input_shape,
        metavar="SHAPE",
        help="example input shape, batch first, e.g. 1,3,224,224 (default: the model's)",
    )
    parser.add_argument(
        "--data",
        required=data_required,
        metavar="NAME",
        help="data set: fashion-mnist, digits, mnist1d, imagefolder",
    )
    parser.add_argument(
        "--data-root", metavar="DIR", help="where the data set lives (default: $PRUNEKIT_DATA)"
    )


def add_output_flags(parser: argparse.ArgumentParser, *, writes: str) -> None:
    """--out (optional), --overwrite, --seed, --json for commands that print and may write."""
    parser.add_argument("--out", metavar="DIR", help=f"write {writes} here")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out directory"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the example inputs")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
