"""`prunekit analyze MODEL`: the dependency graph (prunekit.trace) as a summary."""

from __future__ import annotations

import argparse

from prunekit.cli import _common as c

EXAMPLES = """\
  prunekit analyze torchvision:resnet18 --input-shape 1,3,224,224
  prunekit analyze vgg                       # built-in models know their input shape
  prunekit analyze runs/r18                  # a saved (pruned) model
  prunekit analyze my_net.py:build --input-shape 1,3,32,32 --json > graph.json
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = c.add_subparser(
        subparsers,
        "analyze",
        help="show the groups of coupled channels, what can be pruned and what blocks pruning",
        description=(
            "Trace MODEL and print its groups of coupled channels (what pruning removes together),\n"
            "their layers and sizes, and the operations that block pruning."
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
    parser.add_argument("--json", action="store_true", help="print the graph as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    import prunekit
    from prunekit.recipes._resolve import (
        eval_mode,
        example_inputs,
        require_input_shape,
        resolve_model,
    )

    resolved = resolve_model(args.model)
    shape = require_input_shape(args.input_shape, resolved)
    example = example_inputs(resolved.model, shape)
    graph = prunekit.trace(eval_mode(resolved.model), example)
    if args.json:
        c.print_json(graph.to_dict())
    else:
        print(graph.summary())  # plain text: no wrapping at the terminal width, pipes cleanly
    return 0
