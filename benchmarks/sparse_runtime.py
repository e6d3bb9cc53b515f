"""Sparse runtime: dense vs prunekit sparse layers (pk.sparse.convert) on CPU.

1. LeNet-300-100 end to end: every layer magnitude-pruned to the given sparsity (random weights:
   random-looking unstructured zeros), `pk.sparse.convert` (which keeps a layer dense unless it
   measured faster), then dense vs converted model timed interleaved in the same process.
2. Per-shape kernel sweep: one layer, dense vs each sparse kernel forced ("native": prunekit's C
   kernel, "torch_csr": torch.sparse CSR / MKL), and the crossover sparsity per shape (the lowest
   sparsity from which the best sparse kernel stays faster than dense). Convolutions run on
   im2col columns (F.unfold), at batch <= 8.

Threads are pinned (torch.set_num_threads) per row; batch sizes 1 and 64. Timings are medians of
interleaved rounds, each the median of single calls (prunekit.sparse._timing).

    python benchmarks/sparse_runtime.py            # full sweep
    python benchmarks/sparse_runtime.py --quick    # LeNet at 90%/95% only, short timing

Writes benchmarks/results/sparse_runtime.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit as pk
from prunekit.sparse import _native
from prunekit.sparse._timing import interleaved_median

RESULTS = Path(__file__).parent / "results" / "sparse_runtime.json"

SHAPES: dict[str, tuple[str, dict[str, Any], tuple[int, ...]]] = {
    # name: (layer type, constructor kwargs, input shape without batch)
    "linear 784x300": ("linear", {"in_features": 784, "out_features": 300}, (784,)),
    "linear 300x100": ("linear", {"in_features": 300, "out_features": 100}, (300,)),
    "linear 100x10": ("linear", {"in_features": 100, "out_features": 10}, (100,)),
    "linear 1024x1024": ("linear", {"in_features": 1024, "out_features": 1024}, (1024,)),
    "conv 64x64x3x3 @16x16": (
        "conv",
        {"in_channels": 64, "out_channels": 64, "kernel_size": 3, "padding": 1},
        (64, 16, 16),
    ),
    "conv 6x16x5x5 @14x14 (lenet5)": (
        "conv",
        {"in_channels": 6, "out_channels": 16, "kernel_size": 5},
        (6, 14, 14),
    ),
}


# im2col of a 64-image batch makes the torch_csr convolution take seconds per call: conv rows
# use at most this batch.
CONV_MAX_BATCH = 8


def magnitude_prune_(module: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude `sparsity` fraction of every Linear/Conv2d weight, per layer."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                w = m.weight
                k = int(round(w.numel() * sparsity))
                if k > 0:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w.mul_(w.abs() > threshold)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max())


def timer_for(rounds: int, round_ms: float):
    def timer(layer: str, runs: dict) -> dict[str, float]:
        return interleaved_median(layer, runs, rounds=rounds, round_ms=round_ms)

    return timer


def lenet_row(sparsity: float, batch: int, threads: int, rounds: int, round_ms: float) -> dict:
    torch.manual_seed(0)
    dense = pk.models.lenet300().eval()
    magnitude_prune_(dense, sparsity)
    sparse = copy.deepcopy(dense)
    x = torch.randn(batch, 1, 28, 28)
    timer = timer_for(rounds, round_ms)
    report = pk.sparse.convert(sparse, x, timer=timer)
    with torch.no_grad():
        error = rel_error(sparse(x), dense(x))

    def run(model: nn.Module):
        def call():
            with torch.no_grad():
                return model(x)

        return call

    t = timer("lenet300", {"dense": run(dense), "sparse": run(sparse)})
    whole = (report.model_dense_ms, report.model_sparse_ms)
    return {
        "model": "lenet300",
        "sparsity": sparsity,
        "batch": batch,
        "threads": threads,
        "dense_ms": t["dense"],
        "sparse_ms": t["sparse"],
        "speedup": t["dense"] / t["sparse"],
        "max_rel_error": error,
        "layers": {c.name: c.kernel for c in report.layers},
        "convert_whole_model_ms": whole,
        "layer_report": report.to_dict()["layers"],
    }


def build_layer(kind: str, kwargs: dict[str, Any]) -> nn.Module:
    return (nn.Linear if kind == "linear" else nn.Conv2d)(**kwargs).eval()


def shape_row(
    name: str, sparsity: float, batch: int, threads: int, rounds: int, round_ms: float
) -> dict:
    kind, kwargs, in_shape = SHAPES[name]
    if kind == "conv":
        batch = min(batch, CONV_MAX_BATCH)
    torch.manual_seed(0)
    dense = build_layer(kind, kwargs)
    magnitude_prune_(dense, sparsity)
    x = torch.randn(batch, *in_shape)
    cls = pk.sparse.SparseLinear if kind == "linear" else pk.sparse.SparseConv2d
    kernels = [k for k in pk.sparse.KERNELS if k != "native" or _native.library() is not None]
    layers = {"dense": dense, **{k: cls.from_dense(dense, k).eval() for k in kernels}}

    def run(module: nn.Module):
        def call():
            with torch.no_grad():
                return module(x)

        return call

    with torch.no_grad():
        ref = dense(x)
        errors = {k: rel_error(m(x), ref) for k, m in layers.items() if k != "dense"}
    t = interleaved_median(
        name, {k: run(m) for k, m in layers.items()}, rounds=rounds, round_ms=round_ms
    )
    best = min(kernels, key=lambda k: t[k])
    return {
        "shape": name,
        "sparsity": sparsity,
        "batch": batch,
        "threads": threads,
        "ms": t,
        "best_sparse": best,
        "speedup": t["dense"] / t[best],
        "max_rel_error": max(errors.values()),
    }


def crossovers(rows: list[dict]) -> list[dict]:
    """Per (shape, batch, threads): the lowest sparsity from which sparse stays faster."""
    out = []
    keys = sorted({(r["shape"], r["batch"], r["threads"]) for r in rows})
    for shape, batch, threads in keys:
        sweep = sorted(
            (r for r in rows if (r["shape"], r["batch"], r["threads"]) == (shape, batch, threads)),
            key=lambda r: r["sparsity"],
        )
        crossover = None
        for i, r in enumerate(sweep):
            if all(s["speedup"] > 1.0 for s in sweep[i:]):
                crossover = r["sparsity"]
                break
        out.append(
            {"shape": shape, "batch": batch, "threads": threads, "crossover_sparsity": crossover}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="LeNet at 90%%/95%% only")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--round-ms", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        choices=["lenet", "shapes"],
        help="run one part; the other is kept from the existing --out file",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sparsities = [0.9, 0.95] if args.quick else args.sparsities
    rounds, round_ms = (7, 2.0) if args.quick else (args.rounds, args.round_ms)
    print(f"native kernels: {_native.status()}", flush=True)

    old = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    lenet = old.get("lenet300", []) if args.only == "shapes" else []
    for threads in args.threads if args.only != "shapes" else []:
        torch.set_num_threads(threads)
        for batch in args.batches:
            for sparsity in sparsities:
                row = lenet_row(sparsity, batch, threads, rounds, round_ms)
                lenet.append(row)
                print(
                    f"lenet300 threads={threads} batch={batch:<3d} sparsity={sparsity:.2f}: "
                    f"dense {row['dense_ms']:.4f} ms, sparse {row['sparse_ms']:.4f} ms, "
                    f"speedup {row['speedup']:.2f}x, layers {row['layers']}, "
                    f"error {row['max_rel_error']:.1e}",
                    flush=True,
                )

    shapes = old.get("shapes", []) if args.only == "lenet" else []
    if not args.quick and args.only != "lenet":
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name in SHAPES:
                for batch in args.batches:
                    for sparsity in sparsities:
                        row = shape_row(name, sparsity, batch, threads, rounds, round_ms)
                        shapes.append(row)
                        ms = ", ".join(f"{k} {v:.4f}" for k, v in row["ms"].items())
                        print(
                            f"{name:30s} threads={threads} batch={row['batch']:<3d} "
                            f"sparsity={sparsity:.2f}: {ms} ms -> {row['best_sparse']} "
                            f"{row['speedup']:.2f}x",
                            flush=True,
                        )
    cross = crossovers(shapes)
    if args.only == "shapes" and old.get("machine"):
        print("lenet300 rows kept from the previous run", flush=True)
    for c in cross:
        print(
            f"crossover {c['shape']:30s} threads={c['threads']} batch={c['batch']:<3d}: "
            f"{c['crossover_sparsity']}",
            flush=True,
        )
    result = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "prunekit": pk.__version__,
            "native": _native.status(),
            "load_average": os.getloadavg(),
        },
        "timing": {"rounds": rounds, "round_ms": round_ms, "statistic": "interleaved median"},
        "lenet300": lenet,
        "shapes": shapes,
        "crossover": cross,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
