"""`prunekit profile MODEL_OR_DIR`: params, MACs, latency, memory, size (prunekit.profile)."""

from __future__ import annotations

import argparse

from prunekit.cli import _common as c

EXAMPLES = """\
  prunekit profile runs/r18                  # a saved model: its input shape is stored with it
  prunekit profile torchvision:resnet18 --input-shape 1,3,224,224
  prunekit profile vgg --batch-size 32 --no-latency
  prunekit profile runs/r18 --json > profile.json
"""

# (label, field, formatter name)
_ROWS = (
    ("params", "params", "count"),
    ("nonzero params", "nonzero_params", "count"),
    ("MACs", "macs", "count"),
    ("nonzero MACs", "nonzero_macs", "count"),
    ("latency", "latency_ms", "ms"),
    ("peak memory", "peak_memory_bytes", "bytes"),
    ("size on disk", "size_bytes", "bytes"),
    ("size compressed", "size_compressed_bytes", "bytes"),
    ("energy (estimate)", "energy_mj", "mj"),
    ("threads", "threads", "raw"),
    ("batch size", "batch_size", "raw"),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = c.add_subparser(
        subparsers,
        "profile",
        help="measure params, MACs, latency, peak memory, size and an energy estimate",
        description=(
            "Measure MODEL: parameters (and nonzeros), MACs, CPU latency (median after warm-up),\n"
            "peak memory, size on disk (raw and compressed) and an energy estimate."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument(
        "model", metavar="MODEL_OR_DIR", help="model spec or saved prunekit directory"
    )
    parser.add_argument(
        "--input-shape",
        type=c.input_shape,
        metavar="SHAPE",
        help="example input shape, batch first, e.g. 1,3,224,224 (default: the model's)",
    )
    parser.add_argument(
        "--batch-size",
        type=c.positive_int,
        metavar="N",
        help="replace the batch size of the input shape (default: as given)",
    )
    parser.add_argument(
        "--no-latency", dest="latency", action="store_false", help="skip the latency measurement"
    )
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    return parser


def _fmt(kind: str, value) -> str:
    from prunekit.report import human_bytes, human_count

    if value is None:
        return "-"
    if kind == "count":
        return f"{human_count(value)}  ({value:,})"
    if kind == "bytes":
        return human_bytes(value)
    if kind == "ms":
        return f"{value:.4g} ms"
    if kind == "mj":
        return f"{value:.4g} mJ"
    return str(value)


def run(args: argparse.Namespace) -> int:
    import prunekit
    from prunekit.recipes._resolve import example_inputs, require_input_shape, resolve_model

    resolved = resolve_model(args.model)
    shape = require_input_shape(args.input_shape, resolved)
    if args.batch_size:
        shape = (args.batch_size, *shape[1:])
    example = example_inputs(resolved.model, shape)
    result = prunekit.profile(resolved.model, example, latency=args.latency).to_dict()
    if args.json:
        c.print_json({"model": resolved.spec, "input_shape": list(shape), **result})
        return 0
    from rich.table import Table

    table = Table(title=f"{args.model}  input {tuple(shape)}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, key, kind in _ROWS:
        if key in result and result[key] is not None:
            table.add_row(label, _fmt(kind, result[key]))
    c.stdout_console().print(table)
    return 0
