"""Engine speed: prunekit trace + plan + apply (verification timed apart) vs Torch-Pruning's graph
build + prune, in the same process, alternating, median of several rounds.

    python benchmarks/engine_speed.py                 # resnet50 and vit_b_16
    python benchmarks/engine_speed.py --models resnet18 --rounds 3

Writes benchmarks/results/engine_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

import prunekit as pk

RESULTS = Path(__file__).parent / "results" / "engine_speed.json"


def prunekit_once(name: str) -> dict[str, float]:
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    pk.prune(model, x, ratio=0.5, verify=False)
    prune_s = time.perf_counter() - start
    model = torchvision.models.get_model(name).eval()
    result = pk.prune(model, x, ratio=0.5, verify=True)
    return {"prune_s": prune_s, "verify_s": result.report["verify_seconds"]}


def torch_pruning_once(name: str) -> dict[str, float]:
    import torch_pruning as tp

    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=ignored,
        num_heads=heads,
    )
    pruner.step()
    return {"prune_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_b_16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    results = {}
    prunekit_once("resnet18")  # warm-up: first-call costs (imports, dynamo) are not the engine's
    torch_pruning_once("resnet18")
    for name in args.models:
        ours, theirs = [], []
        for _ in range(args.rounds):  # alternate, so both see the same machine state
            ours.append(prunekit_once(name))
            theirs.append(torch_pruning_once(name))
        row = {
            "prunekit_prune_s": statistics.median(r["prune_s"] for r in ours),
            "prunekit_verify_s": statistics.median(r["verify_s"] for r in ours),
            "torch_pruning_prune_s": statistics.median(r["prune_s"] for r in theirs),
            "threads": args.threads,
            "rounds": args.rounds,
        }
        row["ratio"] = row["prunekit_prune_s"] / row["torch_pruning_prune_s"]
        results[name] = row
        print(
            f"{name}: prunekit {row['prunekit_prune_s']:.2f}s (+verify "
            f"{row['prunekit_verify_s']:.2f}s), Torch-Pruning {row['torch_pruning_prune_s']:.2f}s, "
            f"ratio {row['ratio']:.2f}",
            flush=True,
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
