"""Han et al. 2015 ("Learning both Weights and Connections") on Fashion-MNIST.

LeNet-300-100, the classic LeNet-5 (6/16 channels, 120-84-10, 62k weights) and the LeNet-5 Han
et al. pruned (Caffe's: 20/50 channels, 500-10, 431k weights; `lenet5_caffe`) are trained dense
(20 epochs, cached under ~/.cache/prunekit/benchmarks/), then pruned with retraining to 8% of
their weights (Han et al.'s 12x; biases and norms untouched, the classifier included). Default:
gradual pruning (Zhu & Gupta's cubic schedule as a fit callback: `GradualSchedule` prunes every
quarter epoch during the first 60% of `--epochs` 12 epochs of SGD, one-cycle lr 0.05, then the
run recovers with the masks held).
`--schedule iterative` runs Han et al.'s prune -> retrain rounds instead (`IterativeSchedule`,
`--rounds` 4 rounds each removing the same fraction of the remaining weights, each followed by
`--retrain-epochs` 3 epochs at lr 0.01 with `KeepMasks`). Every scope (allocation of the sparsity
over layers) is compared with magnitude importance; per-layer remaining fractions are reported as
in Han et al. Table 1/2, with the paper's MNIST figures alongside.

    python benchmarks/han2015.py                        # both nets, every scope, gradual
    python benchmarks/han2015.py --schedule iterative --scopes global
    python benchmarks/han2015.py --models lenet300 --scopes global std
    python benchmarks/han2015.py --table                # print the stored results

Results are merged into benchmarks/results/han2015.json after every configuration (`--fresh`
recomputes). Training runs on 1 thread (`--threads`): faster than 2 on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit as pk
from prunekit.data import loaders
from prunekit.models import build_model
from prunekit.recipes._cache import cache_root
from prunekit.train import evaluate, fit
from prunekit.unstructured import (
    GradualSchedule,
    IterativeSchedule,
    KeepMasks,
    masks_of,
    sparsity_report,
)

RESULTS = Path(__file__).parent / "results" / "han2015.json"
SPARSITY = 0.92  # 8% of the weights remain
DENSE = {
    "lenet300": {"epochs": 20, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "lenet5": {"epochs": 20, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "lenet5_caffe": {"epochs": 20, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
}
# Han et al. 2015, Tables 1 and 2 (MNIST): fraction of weights remaining per layer.
HAN_MNIST = {
    "lenet300": {"fc1.weight": 0.08, "fc2.weight": 0.09, "fc3.weight": 0.26},
    "lenet5": {
        "conv1.weight": 0.66,
        "conv2.weight": 0.12,
        "fc1.weight": 0.08,
        "fc2.weight": 0.19,
        "fc3.weight": None,  # Han's LeNet-5 has no third FC layer
    },
    # the same LeNet-5 as Han et al.'s (Caffe's MNIST example): their table applies as is
    "lenet5_caffe": {
        "conv1.weight": 0.66,
        "conv2.weight": 0.12,
        "fc1.weight": 0.08,
        "fc2.weight": 0.19,
    },
}


def accuracy_of(model: nn.Module, test) -> float:
    return evaluate(model.eval(), test)["accuracy"]


def dense_model(name: str, train, test) -> tuple[nn.Module, float]:
    cache = cache_root() / "benchmarks" / f"han2015_{name}_dense"
    if (cache / "prunekit.json").is_file():
        return pk.load(cache).eval(), json.loads((cache / "accuracy.json").read_text())["accuracy"]
    torch.manual_seed(0)
    model = build_model(name)
    fit(model, train, **DENSE[name], schedule="onecycle", seed=0, progress=False)
    accuracy = accuracy_of(model, test)
    pk.save(model, cache)
    (cache / "accuracy.json").write_text(json.dumps({"accuracy": accuracy}))
    return model.eval(), accuracy


def calibration(train, batches: int = 8) -> list:
    """The first batches of epoch 0 (for data-driven importance such as wanda)."""
    train.set_epoch(0)
    return [batch for _, batch in zip(range(batches), train)]


def prune_case(dense, scope: str, importance: str, args, train, test) -> dict[str, Any]:
    """One-shot accuracy (no retraining), then pruning with retraining to SPARSITY."""
    calib = calibration(train)
    one_shot = copy.deepcopy(dense)
    pk.sparsify(one_shot, SPARSITY, importance=importance, scope=scope, data=calib)
    acc_one_shot = accuracy_of(one_shot, test)

    model = copy.deepcopy(dense)
    start = time.perf_counter()
    if args.schedule == "gradual":
        trace = gradual(model, dense, scope, importance, calib, args, train, test)
    else:
        trace = iterative(model, scope, importance, calib, args, train, test)
    seconds = time.perf_counter() - start
    report = sparsity_report(model)
    masks = masks_of(model)
    # the masks held: every pruned weight is still exactly zero after all the retraining
    leaked = sum(int((w != 0)[~masks[n]].sum()) for n, w in model.named_parameters() if n in masks)
    return {
        "scope": scope,
        "importance": importance,
        "schedule": args.schedule,
        "settings": settings(args),
        "sparsity": report.sparsity,
        "compression": report.numel / report.nonzeros,
        "acc_one_shot": acc_one_shot,
        "acc_final": accuracy_of(model, test),
        "trace": trace,
        "layers": {layer.name: layer.remaining for layer in report.layers},
        "layer_numel": {layer.name: layer.numel for layer in report.layers},
        "pruned_weights_nonzero": leaked,
        "seconds": seconds,
    }


def gradual(model, dense, scope, importance, calib, args, train, test) -> list[dict[str, Any]]:
    """Zhu & Gupta: prune every quarter epoch during the first 60% of the run, then recover."""
    steps = len(train) * args.epochs
    schedule = GradualSchedule(
        sparsity=SPARSITY,
        begin=0,
        end=int(0.6 * steps),
        every=max(1, len(train) // 4),
        importance=importance,
        scope=scope,
        data=calib,
    )
    history = fit(
        model,
        train,
        epochs=args.epochs,
        lr=args.lr,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="onecycle",
        seed=1,
        callbacks=[schedule],
        teacher=dense if args.distill else None,
        eval_data=test,
        progress=False,
    )
    return [
        {"epoch": e + 1, "sparsity": schedule.sparsity_at(step), "acc": acc}
        for e, (step, acc) in enumerate(zip(history.steps, history.eval_acc))
    ]


def iterative(model, scope, importance, calib, args, train, test) -> list[dict[str, Any]]:
    """Han et al.: `rounds` of prune -> retrain (`retrain_epochs` each, lr `retrain_lr`)."""
    schedule = IterativeSchedule(
        sparsity=SPARSITY, rounds=args.rounds, importance=importance, scope=scope
    )
    rounds: list[dict[str, Any]] = []

    def retrain(m: nn.Module, r: int) -> None:
        before = accuracy_of(m, test)
        fit(
            m,
            train,
            epochs=args.retrain_epochs,
            lr=args.retrain_lr,
            momentum=0.9,
            weight_decay=5e-4,
            schedule="onecycle",
            seed=100 + r,
            callbacks=[KeepMasks()],
            progress=False,
        )
        rounds.append(
            {
                "sparsity": sparsity_report(m).sparsity,
                "acc_pruned": before,
                "acc_retrained": accuracy_of(m, test),
            }
        )

    schedule.run(model, retrain, data=calib)
    return rounds


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"models": {}}


def store(results: dict[str, Any]) -> None:
    """Merge into the stored file (runs for different models may go on in parallel)."""
    stored = load_results()
    for name, entry in results["models"].items():
        rows = {**stored["models"].get(name, {}).get("rows", {}), **entry["rows"]}
        stored["models"][name] = {**entry, "rows": rows}
    results = {**results, "models": stored["models"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(RESULTS)


def run(args) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    dense_train, test = loaders("fashion-mnist", batch_size=128)
    train = loaders("fashion-mnist", batch_size=128, seed=args.seed)[0]  # retraining data order
    results = {"models": {}} if args.fresh else load_results()
    results["setup"] = {"sparsity": SPARSITY, "dense": DENSE, "batch_size": 128}
    results["environment"] = pk.metrics.environment()
    for name in args.models:
        dense, dense_acc = dense_model(name, dense_train, test)
        entry = results["models"].setdefault(name, {"rows": {}})
        entry["dense_accuracy"] = dense_acc
        entry["han2015_mnist_remaining"] = HAN_MNIST[name]
        print(f"{name}: dense {dense_acc:.2%}", flush=True)
        for importance in args.importances:
            for scope in args.scopes:
                key = f"{importance}/{scope}/{args.schedule}" + variant(args)
                if key in entry["rows"]:
                    continue
                row = prune_case(dense, scope, importance, args, train, test)
                row["delta"] = row["acc_final"] - dense_acc
                entry["rows"][key] = row
                store(results)
                print(format_row(name, key, row), flush=True)


def settings(args) -> dict[str, Any]:
    """The retraining settings of one row (rows of several runs share the results file)."""
    if args.schedule == "gradual":
        return {"epochs": args.epochs, "lr": args.lr, "end": 0.6, "every_epochs": 0.25,
                "distill": args.distill, "seed": args.seed}  # fmt: skip
    return {"rounds": args.rounds, "retrain_epochs": args.retrain_epochs, "lr": args.retrain_lr,
            "seed": args.seed}  # fmt: skip


def variant(args) -> str:
    """Key suffix of non-default settings: `24ep` (gradual epochs), `kd` (distillation), `s2`
    (data-order seed)."""
    suffix = f"/{args.epochs}ep" if args.schedule == "gradual" and args.epochs != 12 else ""
    return suffix + ("/kd" if args.distill else "") + (f"/s{args.seed}" if args.seed else "")


def format_row(name: str, key: str, row: dict[str, Any]) -> str:
    layers = " ".join(f"{n.split('.')[0]} {v:.0%}" for n, v in row["layers"].items())
    return (
        f"{name:9s} {key:28s} remaining {1 - row['sparsity']:.2%} ({row['compression']:.1f}x) "
        f"one-shot {row['acc_one_shot']:.2%} retrained {row['acc_final']:.2%} "
        f"({100 * row['delta']:+.2f} pts) | {layers}"
    )


def table(results: dict[str, Any]) -> str:
    lines = []
    for name, entry in results["models"].items():
        rows = entry["rows"]
        if not rows:
            continue
        layer_names = list(next(iter(rows.values()))["layers"])
        head = [
            "importance/scope/schedule",
            "remaining",
            "one-shot acc",
            "retrained acc",
            "Δ vs dense",
        ]
        head += [n.removesuffix(".weight") for n in layer_names]
        lines.append(f"**{name}** — dense accuracy {entry['dense_accuracy']:.2%}\n")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for key, row in sorted(rows.items(), key=lambda kv: -kv[1]["acc_final"]):
            cells = [
                key,
                f"{1 - row['sparsity']:.2%}",
                f"{row['acc_one_shot']:.2%}",
                f"{row['acc_final']:.2%}",
                f"{100 * row['delta']:+.2f}",
            ] + [f"{row['layers'][n]:.1%}" for n in layer_names]
            lines.append("| " + " | ".join(cells) + " |")
        han = entry["han2015_mnist_remaining"]
        cells = ["Han et al. 2015 (MNIST)", "8%", "", "", ""] + [
            "" if han.get(n) is None else f"{han[n]:.0%}" for n in layer_names
        ]
        lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5", "lenet5_caffe"])
    parser.add_argument("--scopes", nargs="+", default=["global", "std", "lamp", "erk", "local"])
    parser.add_argument("--importances", nargs="+", default=["magnitude"])
    parser.add_argument("--schedule", choices=["gradual", "iterative"], default="gradual")
    parser.add_argument("--epochs", type=int, default=12, help="gradual: epochs in all")
    parser.add_argument("--lr", type=float, default=0.05, help="gradual: one-cycle peak lr")
    parser.add_argument("--distill", action="store_true", help="gradual: distil from dense")
    parser.add_argument("--seed", type=int, default=0, help="order of the retraining data")
    parser.add_argument("--rounds", type=int, default=4, help="iterative: rounds")
    parser.add_argument("--retrain-epochs", type=int, default=3, help="iterative: per round")
    parser.add_argument("--retrain-lr", type=float, default=0.01, help="iterative")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="ignore stored results")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if not args.table:
        run(args)
    print(table(load_results()))


if __name__ == "__main__":
    main()
