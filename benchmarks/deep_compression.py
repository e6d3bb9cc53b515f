"""Deep Compression storage of LeNet-300-100 on Fashion-MNIST (Han et al. 2016: 40x on MNIST).

Pipeline: the dense LeNet-300-100 of benchmarks/han2015.py (loaded from its cache under
~/.cache/prunekit/benchmarks/, else trained here the same way), global magnitude pruning to 8% of
the weights with retraining (default: the gradual schedule of han2015.py, 12 epochs; or
`--schedule iterative`: `--rounds` prune -> retrain rounds, `pk.sparsify` + `KeepMasks`), then
`pk.save(..., compress=...)` in every mode. Reported: file sizes, the ratio to the model's fp32
safetensors file (`pk.save` without masks: what the dense model stores), and the test accuracy of
the model *loaded back* from each file (quantised modes load the quantised weights).

The "kmeans" mode is the Deep Compression recipe: 32-entry codebooks (5 bits) for fc layers,
positions as relative indices or a bitmask (the smaller), LZMA/zlib entropy coding. Han et al.
also retrain the shared centroids; `--tune-centroids N` does N epochs of that (off by default).
A 2:4 semi-structured model is stored too (PyTorch's 2:4 kernels are CUDA-only, so on CPU this
pattern is reported for storage, not speed).

    python benchmarks/deep_compression.py
    python benchmarks/deep_compression.py --quick     # one retraining round of one epoch

Writes benchmarks/results/deep_compression.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit as pk
from prunekit.data import loaders
from prunekit.models import build_model
from prunekit.sparse import _native
from prunekit.sparse._native import cache_root
from prunekit.train import evaluate, fit
from prunekit.unstructured import GradualSchedule, KeepMasks, remove_masks, sparsity_report

RESULTS = Path(__file__).parent / "results" / "deep_compression.json"
SPARSITY = 0.92  # 8% of the weights remain
MODES = ["lossless", "fp16", "int8", "kmeans"]


def accuracy(model: nn.Module, test) -> float:
    return evaluate(model.eval(), test)["accuracy"]


def dense_model(train, test) -> tuple[nn.Module, float, str]:
    """benchmarks/han2015.py's cached dense LeNet-300-100, or one trained here the same way."""
    cache = cache_root() / "benchmarks" / "han2015_lenet300_dense"
    if (cache / "prunekit.json").is_file():
        return pk.load(cache).eval(), accuracy(pk.load(cache), test), str(cache)
    torch.manual_seed(0)
    model = build_model("lenet300")
    fit(model, train, epochs=20, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=0, progress=False)
    return model.eval(), accuracy(model, test), "trained here (20 epochs)"


def prune_retrain(dense: nn.Module, train, test, rounds: int, epochs: int) -> list[dict]:
    """Han et al.: rounds of global magnitude pruning, each followed by retraining with masks."""
    trace = []
    keep = 1 - SPARSITY
    for r in range(1, rounds + 1):
        sparsity = 1 - keep ** (r / rounds)  # the same fraction of the remaining weights per round
        pk.sparsify(dense, sparsity, importance="magnitude", scope="global")
        before = accuracy(dense, test)
        fit(
            dense,
            train,
            epochs=epochs,
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            seed=100 + r,
            callbacks=[KeepMasks()],
            progress=False,
        )
        trace.append(
            {"sparsity": sparsity, "acc_pruned": before, "acc_retrained": accuracy(dense, test)}
        )
        print(
            f"round {r}: sparsity {sparsity:.3f}, acc {before:.4f} -> {trace[-1]['acc_retrained']:.4f}",
            flush=True,
        )
    return trace


def prune_gradual(dense: nn.Module, train, test, epochs: int) -> list[dict]:
    """benchmarks/han2015.py's default: Zhu & Gupta's cubic schedule over the first 60% of
    `epochs` of SGD (one-cycle lr 0.05), pruning every quarter epoch, then recovery."""
    steps = len(train) * epochs
    schedule = GradualSchedule(
        sparsity=SPARSITY,
        begin=0,
        end=int(0.6 * steps),
        every=max(1, len(train) // 4),
        importance="magnitude",
        scope="global",
    )
    history = fit(
        dense,
        train,
        epochs=epochs,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        seed=1,
        callbacks=[schedule],
        eval_data=test,
        progress=False,
    )
    trace = [{"epoch": e + 1, "acc": acc} for e, acc in enumerate(history.eval_acc)]
    print(f"gradual pruning: accuracy per epoch {[round(t['acc'], 4) for t in trace]}", flush=True)
    return trace


def tune_centroids(model: nn.Module, train, epochs: int) -> None:
    """Deep Compression's trained quantization: every weight sharing a centroid gets the
    centroid's summed gradient (Han et al. 2016, eq. 3), zeros stay zero."""
    shared = {}
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            values, index = torch.unique(p.detach(), return_inverse=True)
            shared[name] = (values, index)
    params = dict(model.named_parameters())
    centroids = {n: nn.Parameter(v.clone()) for n, (v, _) in shared.items()}
    optimizer = torch.optim.SGD(centroids.values(), lr=1e-3, momentum=0.9)
    model.train()
    for epoch in range(epochs):
        train.set_epoch(1000 + epoch)
        for x, y in train:
            with torch.no_grad():
                for n, (values, index) in shared.items():
                    params[n].copy_(torch.where(values[index] == 0, 0.0, centroids[n][index]))
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            for n, (values, index) in shared.items():
                grad = torch.zeros_like(values).index_add_(
                    0, index.flatten(), params[n].grad.flatten()
                )
                centroids[n].grad = torch.where(values == 0, 0.0, grad)
            optimizer.step()
    with torch.no_grad():
        for n, (values, index) in shared.items():
            params[n].copy_(torch.where(values[index] == 0, 0.0, centroids[n][index]))
    model.eval()


def stored(model: nn.Module, test, where: Path, name: str, compress: Any) -> dict[str, Any]:
    start = time.perf_counter()
    path = pk.save(model, where / name, compress=compress)
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    loaded = pk.load(path)
    load_s = time.perf_counter() - start
    return {
        "bytes": (path / "model.safetensors").stat().st_size,
        "accuracy": accuracy(loaded, test),
        "save_s": save_s,
        "load_s": load_s,
        "loaded": loaded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 1 retraining epoch")
    parser.add_argument("--schedule", choices=["gradual", "iterative"], default="gradual")
    parser.add_argument("--gradual-epochs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3, help="iterative: prune/retrain rounds")
    parser.add_argument("--epochs", type=int, default=3, help="iterative: epochs per round")
    parser.add_argument("--tune-centroids", type=int, default=0, metavar="EPOCHS")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    rounds, epochs = (1, 1) if args.quick else (args.rounds, args.epochs)
    train, test = loaders("fashion-mnist", batch_size=128, seed=0)

    dense, dense_acc, source = dense_model(train, test)
    print(f"dense LeNet-300-100: accuracy {dense_acc:.4f} ({source})", flush=True)
    pruned = copy.deepcopy(dense)
    if args.schedule == "gradual" and not args.quick:
        trace = prune_gradual(pruned, train, test, args.gradual_epochs)
    else:
        trace = prune_retrain(pruned, train, test, rounds, epochs)
    report = sparsity_report(pruned)
    remove_masks(pruned)  # zeros stay; the masks would be derived from them anyway
    pruned_acc = accuracy(pruned, test)

    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        base = stored(pruned, test, where, "fp32", None)
        base.pop("loaded")
        print(f"fp32 safetensors: {base['bytes']} bytes, accuracy {base['accuracy']:.4f}")
        for mode in MODES:
            row = stored(pruned, test, where, mode, mode)
            row.pop("loaded")
            row["ratio"] = base["bytes"] / row["bytes"]
            row["accuracy_drop_points"] = 100 * (pruned_acc - row["accuracy"])
            rows[mode] = row
            print(
                f"{mode:10s} {row['bytes']:8d} bytes  {row['ratio']:6.1f}x  accuracy "
                f"{row['accuracy']:.4f} ({row['accuracy_drop_points']:+.2f} points)",
                flush=True,
            )
        if args.tune_centroids:
            quantised = stored(pruned, test, where, "kmeans-q", "kmeans")["loaded"]
            tune_centroids(quantised, train, args.tune_centroids)
            row = stored(quantised, test, where, "kmeans-tuned", "kmeans")
            row.pop("loaded")
            row["ratio"] = base["bytes"] / row["bytes"]
            row["accuracy_drop_points"] = 100 * (pruned_acc - row["accuracy"])
            rows["kmeans+tuned"] = row
            print(
                f"kmeans+tuned {row['bytes']} bytes {row['ratio']:.1f}x acc {row['accuracy']:.4f}"
            )

        semi = copy.deepcopy(dense)
        pk.sparsify(semi, pattern="2:4")
        fit(
            semi,
            train,
            epochs=1,
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            seed=7,
            callbacks=[KeepMasks()],
            progress=False,
        )
        remove_masks(semi)
        semi_rows = {}
        for mode in ["lossless", "kmeans"]:
            row = stored(semi, test, where, f"2of4-{mode}", mode)
            row.pop("loaded")
            row["ratio"] = base["bytes"] / row["bytes"]
            semi_rows[mode] = row
            print(
                f"2:4 {mode:10s} {row['bytes']:8d} bytes {row['ratio']:6.1f}x acc {row['accuracy']:.4f}"
            )

    result = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "prunekit": pk.__version__,
            "native": _native.status(),
        },
        "dense": {"accuracy": dense_acc, "source": source},
        "pruning": {
            "target_sparsity": SPARSITY,
            "schedule": "iterative" if args.quick else args.schedule,
            "sparsity": report.sparsity,
            "layers_remaining": {layer.name: layer.remaining for layer in report.layers},
            "rounds": trace,
            "accuracy": pruned_acc,
        },
        "fp32_safetensors": base,
        "compressed": rows,
        "semi_structured_2of4": {
            "note": "PyTorch's 2:4 kernels are CUDA-only: storage reported, no CPU speed",
            "rows": semi_rows,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
