"""Export speed: a torchvision resnet18 pruned to 4x fewer MACs, exported to ONNX and timed in ONNX
Runtime (one thread, sequential) against the unpruned export at batch 1 and 32, interleaved; the
default pruned VGG exported to all three formats with its verification errors.

    python benchmarks/export_speed.py                  # full run (a few minutes on 2 cores)
    python benchmarks/export_speed.py --quick          # fewer timed runs, batch 32 shortened
    python benchmarks/export_speed.py --torch-pruning  # + Torch-Pruning's resnet18 side by side

Random weights are fine: latency does not depend on them, and every export is verified against
PyTorch on random inputs (max |error| / max |output| <= 1e-4). Target: speedup >= 0.9 x the MACs
reduction. Writes benchmarks/results/export_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import prunekit as pk
from prunekit.io import export_latency
from prunekit.metrics import environment

RESULTS = Path(__file__).parent / "results" / "export_speed.json"


def macs(model: nn.Module, x: torch.Tensor) -> int:
    return pk.profile(model, x, latency=False).macs


def torch_pruning_resnet18(x: torch.Tensor) -> nn.Module:
    """Torch-Pruning's resnet18 at channel ratio 0.5 (L2 magnitude, classifier kept)."""
    import torch_pruning as tp

    model = torchvision.models.resnet18().eval()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model


def time_pair(pruned: Path, dense: Path, shape: tuple[int, ...], args) -> dict[str, Any]:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    batch = shape[0]
    runs, warmup = (args.runs, args.warmup) if batch == 1 else (args.runs_large, 2)
    stats = export_latency(
        pruned, x, baseline=dense, threads=args.threads, runs=runs, warmup=warmup
    )
    return {
        "pruned_ms": stats["ms"],
        "dense_ms": stats["baseline_ms"],
        "speedup": stats["speedup"],
        "pruned_p10_p90_ms": [stats["p10_ms"], stats["p90_ms"]],
        "dense_p10_p90_ms": [stats["baseline_p10_ms"], stats["baseline_p90_ms"]],
        "runs": runs,
        "warmup": warmup,
    }


def resnet18(args, tmp: Path) -> dict[str, Any]:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    dense = torchvision.models.resnet18().eval()
    dense_macs = macs(dense, x)
    dense_file = pk.export(dense, tmp / "dense.onnx", example_inputs=x).path
    variants: dict[str, nn.Module] = {}
    for round_to in args.round_to:
        model = torchvision.models.resnet18().eval()
        result = pk.prune(model, x, target={"macs": 0.25}, round_to=round_to or None)
        variants[f"prunekit round_to={round_to or None}"] = result.model
    if args.torch_pruning:
        variants["torch-pruning ratio=0.5"] = torch_pruning_resnet18(x)
    rows = {}
    for name, model in variants.items():
        exported = pk.export(model, tmp / f"{len(rows)}.onnx", example_inputs=x)
        reduction = dense_macs / macs(model, x)
        row: dict[str, Any] = {
            "macs_reduction": reduction,
            "exporter": exported.exporter,
            "max_rel_error": exported.max_rel_error,
            "verified_batch_sizes": exported.batch_sizes,
            "onnx_bytes": exported.size_bytes,
        }
        for batch in args.batch_sizes:
            timing = time_pair(exported.path, dense_file, (batch, 3, 224, 224), args)
            timing["speedup_over_macs_reduction"] = timing["speedup"] / reduction
            timing["meets_0.9"] = timing["speedup_over_macs_reduction"] >= 0.9
            row[f"batch_{batch}"] = timing
            print(
                f"resnet18 {name}: MACs /{reduction:.2f}, batch {batch}: dense "
                f"{timing['dense_ms']:.1f} ms, pruned {timing['pruned_ms']:.1f} ms, speedup "
                f"{timing['speedup']:.2f}x = {timing['speedup_over_macs_reduction']:.2f} x MACs "
                "reduction",
                flush=True,
            )
        rows[name] = row
    return {"dense_macs": dense_macs, "dense_onnx_bytes": dense_file.stat().st_size, **rows}


def vgg(args, tmp: Path) -> dict[str, Any]:
    """The default job's model (VGG, Fashion-MNIST shapes) pruned like `prunekit run` does."""
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model = pk.build_model("vgg").eval()
    dense_macs = macs(model, x)
    result = pk.prune(model, x, target={"macs": 0.5})
    saved = pk.save(result.model, tmp / "vgg", plan=result.plan, example_inputs=(x,))
    row: dict[str, Any] = {"macs_reduction": dense_macs / macs(result.model, x)}
    for fmt in ("onnx", "torchscript", "exported-program"):
        exported = pk.export(saved, format=fmt, quantize="int8" if fmt == "onnx" else None)
        row[fmt] = {
            "exporter": exported.exporter,
            "verified": exported.verified,
            "max_abs_error": exported.max_abs_error,
            "max_rel_error": exported.max_rel_error,
            "verified_batch_sizes": exported.batch_sizes,
            "bytes": exported.size_bytes,
        }
        if exported.quantized_path is not None:
            row[fmt]["int8_bytes"] = exported.quantized_size_bytes
            row[fmt]["int8_max_rel_error"] = exported.quantized_max_rel_error
        print(
            f"vgg {fmt}: {exported.exporter}, max rel error {exported.max_rel_error:.2e} "
            f"(batch sizes {exported.batch_sizes})",
            flush=True,
        )
    dense_file = pk.export(pk.build_model("vgg").eval(), tmp / "vgg_dense.onnx", example_inputs=x)
    for batch in args.batch_sizes:
        timing = time_pair(saved / "model.onnx", dense_file.path, (batch, 1, 28, 28), args)
        row[f"onnx_batch_{batch}"] = timing
        print(f"vgg onnx batch {batch}: speedup {timing['speedup']:.2f}x", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (1)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--round-to", type=int, nargs="+", default=[0, 8], help="0: none")
    parser.add_argument("--torch-pruning", action="store_true", help="add Torch-Pruning's model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.runs, args.warmup, args.runs_large = (10, 3, 3) if args.quick else (50, 10, 10)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    load_average = os.getloadavg()  # other processes disturb the timings: record how busy
    with tempfile.TemporaryDirectory(prefix="prunekit-export-speed-") as tmp:
        results = {
            "resnet18": resnet18(args, Path(tmp)),
            "vgg": vgg(args, Path(tmp)),
            "settings": {
                "threads": args.threads,
                "runtime": "onnxruntime CPU, intra_op=threads, inter_op=1, sequential",
                "quick": args.quick,
                "load_average_at_start": load_average,
                "onnxruntime": __import__("onnxruntime").__version__,
                "batch_sizes": args.batch_sizes,
            },
            "environment": environment(),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
