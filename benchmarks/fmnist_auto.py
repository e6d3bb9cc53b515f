"""Automatic per-group ratios (scope="auto") vs uniform (local) and global ranking, on ResNet-20.

ResNet-20 (CIFAR variant, 1-channel 28x28) is trained on Fashion-MNIST once (3 epochs of SGD
one-cycle, cached), then pruned with the l2 criterion to 4x fewer MACs and to 50% of the measured
batch-64 latency by each scope; accuracy right after pruning, after BatchNorm recalibration, and
after 1 epoch of SGD fine-tuning (lr 0.02, one-cycle; the same loop for every scope) with 3 seeds.

    python benchmarks/fmnist_auto.py                 # the whole grid
    python benchmarks/fmnist_auto.py --budgets macs  # only the MACs budget
    python benchmarks/fmnist_auto.py --scopes auto-recal   # auto, auto_recalibrate=True
    python benchmarks/fmnist_auto.py --epochs 5 --seeds 1  # a longer fine-tune (rows of their own)
    python benchmarks/fmnist_auto.py --table         # print the stored results
    python benchmarks/fmnist_auto.py --readme        # write the README table

Results are merged into benchmarks/results/fmnist_auto.json after every configuration.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import _results  # benchmarks/_results.py, next to this script
import torch
from fmnist_structured import scope_options  # the benchmarks' `auto-recal` scope
from torch import nn

import prunekit as pk
from prunekit.data import loaders
from prunekit.models import build_model
from prunekit.recipes._cache import cache_root
from prunekit.train import evaluate, fit

RESULTS = Path(__file__).parent / "results" / "fmnist_auto.json"
DENSE = {"epochs": 3, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle"}
FINETUNE = {"epochs": 1, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle"}
BUDGETS = {"macs": {"macs": 0.25}, "latency": {"latency": 0.5}}
CALIBRATION_BATCHES = 8
LATENCY_BATCH = 64
X = torch.zeros(1, 1, 28, 28)


def dense_model(train, test, cache: Path) -> tuple[nn.Module, float]:
    if (cache / "prunekit.json").is_file():
        return pk.load(cache).eval(), json.loads((cache / "accuracy.json").read_text())["accuracy"]
    torch.manual_seed(0)
    model = build_model("resnet20")
    fit(model, train, **DENSE, seed=0)
    accuracy = evaluate(model.eval(), test)["accuracy"]
    pk.save(model, cache)
    (cache / "accuracy.json").write_text(json.dumps({"accuracy": accuracy}))
    return model, accuracy


def calibration(train) -> list:
    train.set_epoch(0)
    return [b for _, b in zip(range(CALIBRATION_BATCHES), train)]


def accuracy_of(model, test) -> float:
    return evaluate(model.eval(), test)["accuracy"]


def finetuned(model, test, seed: int, epochs: int) -> float:
    twin = copy.deepcopy(model)
    train, _ = loaders("fashion-mnist", batch_size=128, seed=seed)  # the seed orders the data
    fit(twin, train, **{**FINETUNE, "epochs": epochs}, seed=seed, progress=False)
    return accuracy_of(twin, test)


def run_case(
    scope: str, budget: str, ctx: dict[str, Any], seeds: list[int], epochs: int
) -> tuple[dict[str, Any], nn.Module]:
    """The row of one (scope, budget) case, with `seeds` fine-tuned, and the pruned model."""
    model = copy.deepcopy(ctx["dense"])
    x = torch.zeros(LATENCY_BATCH, 1, 28, 28) if budget == "latency" else X
    start = time.perf_counter()
    result = pk.prune(
        model, x, target=BUDGETS[budget], importance="l2", data=ctx["calib"], **scope_options(scope)
    )
    prune_s = time.perf_counter() - start
    model = result.model.eval()
    recal = copy.deepcopy(model)
    pk.recalibrate_bn(recal, ctx["calib"])
    timing = pk.metrics.compare_latency(
        ctx["dense"], model, torch.randn(LATENCY_BATCH, 1, 28, 28), runs=40, threads=1
    )
    macs = pk.profile(model, X, latency=False, memory=False, size=False).macs
    return {
        "scope": scope,
        "budget": budget,
        "epochs": epochs,
        "target": BUDGETS[budget],
        "prune_s": prune_s,
        "macs_kept": macs / ctx["dense_macs"],
        "latency_kept_b64": 1.0 / timing["speedup"],
        "acc_pruned": accuracy_of(model, ctx["test"]),
        "acc_recalibrated": accuracy_of(recal, ctx["test"]),
        "acc_finetuned": {str(s): finetuned(model, ctx["test"], s, epochs) for s in seeds},
        "auto_ratios": (result.report.get("target") or {}).get("auto", {}).get("ratios"),
    }, model


def load_results() -> dict[str, Any]:
    return _results.load(RESULTS)


def store(results: dict[str, Any]) -> None:
    _results.store(RESULTS, results)


def sweep(args) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    train, test = loaders("fashion-mnist", batch_size=128)
    dense, dense_acc = dense_model(train, test, cache_root() / "benchmarks" / "fmnist_resnet20")
    results = _results.of_dense(RESULTS, dense_acc, fresh=args.fresh)
    dense_macs = pk.profile(dense, X, latency=False, memory=False, size=False).macs
    results.update(
        dense_accuracy=dense_acc,
        dense_macs=dense_macs,
        finetune=FINETUNE,
        environment=pk.metrics.environment(),
    )
    ctx = {"dense": dense.eval(), "dense_macs": dense_macs, "calib": calibration(train)}
    ctx["test"] = test
    print(f"dense: {dense_acc:.2%}, {dense_macs / 1e6:.1f}M MACs", flush=True)
    for budget in args.budgets:
        for scope in args.scopes:
            key = f"{scope}/{budget}" + (f"/{args.epochs}ep" if args.epochs != 1 else "")
            row = results["rows"].get(key)
            missing = [
                s for s in range(args.seeds) if row is None or str(s) not in row["acc_finetuned"]
            ]
            if not missing:
                continue
            fresh, model = run_case(scope, budget, ctx, missing, args.epochs)
            if row is not None and row["macs_kept"] == fresh["macs_kept"]:
                fresh["acc_finetuned"] = {**row["acc_finetuned"], **fresh["acc_finetuned"]}
            elif row is not None:  # a latency plan depends on timings: not the stored model
                print(f"{key}: pruned to another model than the stored row's; all seeds re-run")
                for s in set(range(args.seeds)) - set(missing):
                    fresh["acc_finetuned"][str(s)] = finetuned(model, ctx["test"], s, args.epochs)
            results["rows"][key] = fresh
            store(results)
            print(format_row(key, fresh), flush=True)


def _mean(r: dict[str, Any]) -> float:
    return statistics.mean(r["acc_finetuned"].values())


def _epochs(r: dict[str, Any]) -> int:
    return r.get("epochs", FINETUNE["epochs"])


def format_row(key: str, r: dict[str, Any]) -> str:
    return (
        f"{key:16s} MACs kept {r['macs_kept']:.3f} latency kept {r['latency_kept_b64']:.3f} "
        f"pruned {r['acc_pruned']:.2%} recal {r['acc_recalibrated']:.2%} "
        f"finetuned {_mean(r):.2%} (n={len(r['acc_finetuned'])})"
    )


def table(results: dict[str, Any]) -> str:
    if not results["rows"]:
        return f"no results yet: run python {Path(__file__).name}"
    lines = [
        "| budget | scope | MACs kept | latency kept (b64) | acc pruned | + BN recal | "
        "fine-tuning epochs | fine-tuned (seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(results["rows"].values(), key=lambda r: (r["budget"], _epochs(r), -_mean(r)))
    for r in order:
        accs = list(r["acc_finetuned"].values())
        lines.append(
            f"| {r['budget']} {list(r['target'].values())[0]} | {r['scope']} | "
            f"{r['macs_kept']:.3f} | {r['latency_kept_b64']:.3f} | {r['acc_pruned']:.2%} | "
            f"{r['acc_recalibrated']:.2%} | {_epochs(r)} | {_results.accuracy_cell(accs)} |"
        )
    head = (
        f"ResNet-20 dense: {results['dense_accuracy']:.2%}, "
        f"{results['dense_macs'] / 1e6:.1f}M MACs; l2 criterion; accuracies in %."
    )
    return head + "\n\n" + "\n".join(lines).replace("%", "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=list(BUDGETS))
    parser.add_argument("--scopes", nargs="+", default=["local", "global", "auto"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    if args.table or args.readme:
        _results.show(table(load_results()), readme_marker="fmnist-auto" if args.readme else None)
        return
    sweep(args)
    print(table(load_results()))


if __name__ == "__main__":
    main()
