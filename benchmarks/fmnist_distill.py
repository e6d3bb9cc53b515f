"""Does distillation help fine-tuning? ResNet-20 on Fashion-MNIST at 4x fewer MACs.

The dense ResNet-20 of benchmarks/fmnist_auto.py (3 epochs of SGD one-cycle, cached) is pruned
with the l2 criterion to a quarter of its MACs (the `resnet20_4x_distill` recipe's settings),
then fine-tuned for the same number of epochs (SGD lr 0.02 one-cycle) with and without
distillation from the dense model (T = 4, weight 0.5: the recipe's), for 3 seeds each (the seed
orders the data). Both arms start from the same pruned weights.

    python benchmarks/fmnist_distill.py               # scope local, 1 epoch, 3 seeds
    python benchmarks/fmnist_distill.py --scope auto --epochs 2
    python benchmarks/fmnist_distill.py --epochs 2 --temperature 2 --weight 0.9   # other KD settings
    python benchmarks/fmnist_distill.py --table       # print the stored results
    python benchmarks/fmnist_distill.py --readme      # write the README table

Results are merged into benchmarks/results/fmnist_distill.json after every fine-tuning run.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path
from typing import Any

import _results  # benchmarks/_results.py, next to this script
import fmnist_auto  # the shared dense ResNet-20
import torch

import prunekit as pk
from prunekit.data import loaders
from prunekit.recipes import load_recipe
from prunekit.recipes._cache import cache_root
from prunekit.train import evaluate, fit

RESULTS = Path(__file__).parent / "results" / "fmnist_distill.json"
X = torch.zeros(1, 1, 28, 28)


def recipe_settings() -> dict[str, Any]:
    """Pruning and distillation settings of the shipped recipe (so the benchmark measures it)."""
    recipe = load_recipe("resnet20_4x_distill")
    kd = recipe.finetune.distillation
    return {
        "target": recipe.prune.target,
        "importance": recipe.prune.importance,
        "calibration_batches": recipe.prune.calibration_batches,
        "temperature": kd.temperature,
        "weight": kd.weight,
    }


def finetuned(model, teacher, settings, epochs: int, seed: int, test) -> float:
    student = copy.deepcopy(model)
    train, _ = loaders("fashion-mnist", batch_size=128, seed=seed)
    kwargs: dict[str, Any] = {**fmnist_auto.FINETUNE, "epochs": epochs}
    if teacher is not None:
        kwargs.update(
            teacher=teacher,
            distill_temperature=settings["temperature"],
            distill_weight=settings["weight"],
        )
    fit(student, train, **kwargs, seed=seed, progress=False)
    return evaluate(student.eval(), test)["accuracy"]


def sweep(args) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    settings = recipe_settings()
    kd = {
        "temperature": args.temperature or settings["temperature"],
        "weight": args.weight if args.weight is not None else settings["weight"],
    }
    train, test = loaders("fashion-mnist", batch_size=128)
    dense, dense_acc = fmnist_auto.dense_model(
        train, test, cache_root() / "benchmarks" / "fmnist_resnet20"
    )
    dense.eval()
    train.set_epoch(0)
    calibration = [b for _, b in zip(range(settings["calibration_batches"]), train)]
    pruned = copy.deepcopy(dense)
    pk.prune(
        pruned,
        X,
        target=settings["target"],
        importance=settings["importance"],
        scope=args.scope,
        data=calibration,
    )
    macs_kept = pk.profile(pruned, X, latency=False, memory=False, size=False).macs / (
        pk.profile(dense, X, latency=False, memory=False, size=False).macs
    )
    results = _results.load(RESULTS)
    results.setdefault("rows", {})
    results.update(
        dense_accuracy=dense_acc,
        settings=settings,
        finetune=fmnist_auto.FINETUNE,
        environment=pk.metrics.environment(),
    )
    print(f"dense {dense_acc:.2%}; pruned to {macs_kept:.3f} of the MACs", flush=True)
    for arm, teacher in (("without", None), ("with", dense)):
        key = f"{args.scope}/{args.epochs}ep/{arm}"
        fields = {"scope": args.scope, "epochs": args.epochs, "distillation": arm, "acc": {}}
        if teacher is not None and kd != {k: settings[k] for k in kd}:  # not the recipe's
            key += f"/T{kd['temperature']:g}w{kd['weight']:g}"
            fields.update(kd)
        row = results["rows"].setdefault(key, fields)
        row["macs_kept"] = macs_kept
        for seed in range(args.seeds):
            if str(seed) in row["acc"]:
                continue
            row["acc"][str(seed)] = finetuned(pruned, teacher, kd, args.epochs, seed, test)
            _results.store(RESULTS, results)
            print(f"{key} seed {seed}: {row['acc'][str(seed)]:.2%}", flush=True)


def _arm(row: dict[str, Any]) -> str:
    """'with' / 'without', and the distillation settings where they are not the recipe's."""
    if "temperature" not in row:
        return row["distillation"]
    return f"{row['distillation']} (T={row['temperature']:g}, weight {row['weight']:g})"


def table(results: dict[str, Any]) -> str:
    rows = results.get("rows") or {}
    if not rows:
        return f"no results yet: run python {Path(__file__).name}"
    lines = [
        "| scope | fine-tuning epochs | distillation | MACs kept | accuracy (mean ± sd, seeds) |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(rows.values(), key=lambda r: (r["scope"], r["epochs"], _arm(r))):
        accs = list(r["acc"].values())
        if not accs:
            continue
        lines.append(
            f"| {r['scope']} | {r['epochs']} | {_arm(r)} | {r['macs_kept']:.3f} | "
            f"{_results.accuracy_cell(accs)} |"
        )
    s = results.get("settings", {})
    head = (
        f"ResNet-20 dense: {results['dense_accuracy']:.2%}; l2 to {s.get('target')}; "
        f"distillation T={s.get('temperature')}, weight {s.get('weight')}; accuracies in %."
    )
    return head + "\n\n" + "\n".join(lines).replace("%", "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scope", default="local", choices=["local", "global", "auto"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--temperature", type=float, help="instead of the recipe's")
    parser.add_argument("--weight", type=float, help="distillation weight, instead of the recipe's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    if not (args.table or args.readme):
        sweep(args)
    marker = "fmnist-distill" if args.readme else None
    _results.show(table(_results.load(RESULTS)), readme_marker=marker)


if __name__ == "__main__":
    main()
