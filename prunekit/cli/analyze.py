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
            "their layers and sizes, the operations that block pruning, and the params and MACs\n"
            "of each layer at the example input."
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
    model = eval_mode(resolved.model)
    graph = prunekit.trace(model, example)
    cost = prunekit.profile(model, example, latency=False, memory=False, size=False)
    if args.json:
        c.print_json({**graph.to_dict(), "macs": cost.macs, "layers": cost.layers})
    else:  # plain text: no wrapping at the terminal width, pipes cleanly
        print(graph.summary() + "\n\n" + _layers_text(cost.layers, cost.macs))
    return 0


def _layers_text(layers: dict, total_macs: int, top: int = 40) -> str:
    """The costliest layers by MACs at the example input, with their parameters."""
    rows = sorted(
        (
            (name, info)
            for name, info in layers.items()
            if name and (info["macs"] or info["params"])
        ),
        key=lambda item: -item[1]["macs"],
    )
    lines = [
        f"layers by MACs ({total_macs:,} in all, at the example input):",
        f"{'layer':<44} {'type':<18} {'params':>12} {'MACs':>14} {'share':>6}",
    ]
    for name, info in rows[:top]:
        share = info["macs"] / total_macs if total_macs else 0.0
        lines.append(
            f"{name:<44} {info['type']:<18} {info['params']:>12,} {info['macs']:>14,} {share:>6.1%}"
        )
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more layers")
    return "\n".join(lines)
