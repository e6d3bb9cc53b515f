"""`prunekit export RUN_DIR_OR_MODEL --format ...`: a verified deployable artefact (prunekit.export)."""

from __future__ import annotations

import argparse

from prunekit.cli import _common as c

EXAMPLES = """\
  prunekit export runs/r18 --format onnx           # writes runs/r18/model.onnx, checked with ONNX Runtime
  prunekit export runs/r18 --format torchscript    # runs/r18/model.pt (scripted, else traced)
  prunekit export runs/r18 --format torchscript --freeze --latency   # frozen for inference
  prunekit export runs/r18 --format exported-program --latency   # runs/r18/model.pt2 + timing
  prunekit export runs/r18 --latency --input-shape 32,3,224,224   # timed at batch 32
  prunekit export runs/vgg --quantize int8 --data fashion-mnist   # + model.int8.onnx, accuracy
  prunekit export torchvision:resnet18 --input-shape 1,3,224,224 --out r18.onnx
"""

FORMATS = ("onnx", "torchscript", "exported-program")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = c.add_subparser(
        subparsers,
        "export",
        help="write ONNX / TorchScript / torch.export artefacts, verified in their runtime",
        description=(
            "Export a saved or run directory (or a MODEL spec) to a deployable file, run the file\n"
            "in its runtime (ONNX Runtime, torch.jit.load, torch.export.load) at two batch sizes\n"
            "and compare it with PyTorch: max |error| / max |output| must be <= --rtol, otherwise\n"
            "nothing is written and the exit code is 1."
        ),
        examples=EXAMPLES,
    )
    parser.add_argument(
        "model",
        metavar="RUN_DIR_OR_MODEL",
        help="a `prunekit run` / `prune --out` directory, a saved model, or a MODEL spec",
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="default: onnx")
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="output file (default: RUN_DIR/model.onnx, model.pt or model.pt2)",
    )
    parser.add_argument(
        "--input-shape",
        type=c.input_shape,
        metavar="SHAPE",
        help="example input shape, batch first, e.g. 1,3,224,224 (default: the one saved)",
    )
    parser.add_argument(
        "--exporter",
        default="auto",
        choices=("auto", "dynamo", "torchscript", "script", "trace"),
        help="ONNX: dynamo or torchscript; TorchScript: script or trace (default: try in order)",
    )
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="TorchScript: write the module frozen for inference (BatchNorm folded); load it "
        "with torch.jit.optimize_for_inference(torch.jit.load(path))",
    )
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        help="also write an int8 (dynamic quantisation) copy of the ONNX file",
    )
    parser.add_argument(
        "--data",
        metavar="NAME",
        help="evaluation data (fashion-mnist, digits, mnist1d, imagefolder): measure accuracy "
        "of the export (and of the int8 copy)",
    )
    parser.add_argument("--data-root", metavar="DIR", help="where the data set lives")
    parser.add_argument(
        "--data-subset", type=c.positive_int, metavar="N", help="evaluate on the first N examples"
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="measure latency in the runtime next to the unpruned model's export",
    )
    parser.add_argument(
        "--threads", type=c.positive_int, default=1, metavar="N", help="latency threads (1)"
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=None,
        metavar="X",
        help="verification tolerance (1e-4; 1e-2 for float16, 5e-2 for bfloat16 models)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _inputs(args: argparse.Namespace):
    """(what to export, example inputs or None): a directory is passed on as a path."""
    from prunekit.recipes._resolve import (
        example_inputs,
        is_saved_dir,
        resolve_model,
        saved_example_inputs,
    )

    if is_saved_dir(args.model):
        if args.input_shape is None:
            return args.model, None  # the inputs recorded in the save
        return args.model, saved_example_inputs(args.model, args.input_shape)
    if args.out is None:
        raise ValueError(
            f"{args.model} is not a saved directory: pass --out, e.g. --out model.onnx"
        )
    resolved = resolve_model(args.model)
    from prunekit.recipes._resolve import require_input_shape

    shape = require_input_shape(args.input_shape, resolved)
    return resolved.model, example_inputs(resolved.model, shape)


def _data(args: argparse.Namespace):
    if args.data is None:
        return None
    from prunekit.data import loaders

    _, test = loaders(args.data, root=args.data_root, subset=args.data_subset, batch_size=256)
    return test


def _rows(result) -> list[tuple[str, str]]:
    from prunekit.report import human_bytes

    def err(x):
        return "-" if x is None else f"{x:.3g}"

    rows = [
        ("file", str(result.path)),
        ("exporter", result.exporter + (", frozen" if result.frozen else "")),
        ("runtime", result.runtime),
        (
            "verified",
            f"yes, batch sizes {', '.join(map(str, result.batch_sizes))}"
            if result.verified
            else "no",
        ),
        ("max abs error", err(result.max_abs_error)),
        ("max rel error", err(result.max_rel_error)),
        ("dynamic batch", "yes" if result.dynamic_batch else "no"),
        ("size", human_bytes(result.size_bytes)),
    ]
    if result.accuracy is not None:
        rows.append(("accuracy", f"{result.accuracy:.2%}"))
    if result.quantized_path is not None:
        rows += [
            ("int8 file", str(result.quantized_path)),
            ("int8 size", human_bytes(result.quantized_size_bytes)),
            ("int8 rel error", err(result.quantized_max_rel_error)),
        ]
        if result.quantized_accuracy is not None:
            rows.append(("int8 accuracy", f"{result.quantized_accuracy:.2%}"))
    lat = result.latency
    if lat:
        where = f"batch {lat['batch_size']}, {lat['threads']} thread(s), {lat['runtime']}"
        rows.append(("latency", f"{lat['ms']:.4g} ms  ({where})"))
        if lat.get("baseline_ms") is not None:
            rows.append((f"{lat['baseline']} latency", f"{lat['baseline_ms']:.4g} ms"))
            rows.append(("speedup", f"{lat['speedup']:.2f}x"))
    for attempt in result.attempts:
        rows.append(("skipped", attempt))
    for note in result.notes:
        rows.append(("note", note))
    return rows


def run(args: argparse.Namespace) -> int:
    import prunekit

    if args.quantize and args.format != "onnx":
        raise ValueError("--quantize int8 applies to --format onnx only")
    if args.freeze and args.format != "torchscript":
        raise ValueError("--freeze applies to --format torchscript only")
    if args.rtol is not None and not args.rtol > 0:
        raise ValueError(f"--rtol must be positive, got {args.rtol}")
    if args.out is not None:  # before any work: a wrong extension writes nothing
        from prunekit.io.export import check_path

        check_path(args.out, args.format)
    model, example = _inputs(args)
    result = prunekit.export(
        model,
        args.out,
        format=args.format,
        example_inputs=example,
        exporter=args.exporter,
        freeze=args.freeze,
        rtol=args.rtol,
        quantize=args.quantize,
        data=_data(args),
        latency=args.latency,
        threads=args.threads,
    )
    if args.json:
        c.print_json(result.to_dict())
        return 0
    from rich.table import Table

    table = Table(title=f"{args.model} -> {args.format}", title_justify="left")
    table.add_column("")
    table.add_column("value")
    for label, value in _rows(result):
        table.add_row(label, value)
    c.stdout_console().print(table)
    return 0
