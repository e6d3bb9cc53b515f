"""Keyword spotting on spoken words synthesised offline, pruned structurally.

Data: `keywords-synth` (prunekit/data/_speech.py): 10 keywords, `_unknown_` (other words) and
`_silence_`, spoken by espeak-ng with 32 training voices and 8 test voices never heard in
training, shifted in a 1 s window and mixed with noise at 0-20 dB SNR; 40 log-mel bins x 101
frames. Model: `kws_dscnn` (DS-CNN, 22k parameters), trained once (cached under
cache_root()/benchmarks/kws_dscnn). Then, for scope local, global and auto, the l2 criterion
prunes it to 1/2 and 1/4 of its MACs (calibration: 8 training batches), BatchNorm statistics are
re-measured, and the recalibrated model is fine-tuned for 2 epochs (the same loop for every row).
Latency: the dense and the pruned model timed interleaved in one process at batch 1 and 32 with
1 thread (medians).

    python benchmarks/speech_kws.py            # the grid (synthesises the data on first use)
    python benchmarks/speech_kws.py --seeds 3  # 3 fine-tuning seeds per row (stored results)
    python benchmarks/speech_kws.py --table    # print the stored results
    python benchmarks/speech_kws.py --readme   # write the README section (speech-kws marker)
    python benchmarks/speech_kws.py --fresh    # forget stored rows (the dense model stays cached)

Results are merged into benchmarks/results/speech_kws.json after every configuration.
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
from torch import nn

import prunekit as pk
from prunekit.data import loaders
from prunekit.data._speech import DEFAULT_SETTINGS, cache_dir
from prunekit.models import build_model
from prunekit.recipes._cache import cache_root
from prunekit.train import evaluate, fit

RESULTS = Path(__file__).parent / "results" / "speech_kws.json"
DENSE = {"epochs": 8, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle"}
FINETUNE = {"epochs": 2, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle"}
MACS = (0.5, 0.25)
SCOPES = ("local", "global", "auto")
BATCH = 64
CALIBRATION_BATCHES = 8
LATENCY = {1: 300, 32: 60}  # batch size -> timed runs (each model)
X = torch.zeros(1, 1, 40, 101)


def dense_model(train, test, cache: Path) -> tuple[nn.Module, float]:
    """The trained dense model, trained once per machine and data set (the cache is keyed)."""
    data = cache_dir(DEFAULT_SETTINGS).name
    info = cache / "accuracy.json"
    if info.is_file() and (stored := json.loads(info.read_text())).get("data") == data:
        if stored.get("training") == DENSE:
            return pk.load(cache).eval(), stored["accuracy"]
    torch.manual_seed(0)
    model = build_model("kws_dscnn")
    fit(model, train, **DENSE, seed=0)
    accuracy = evaluate(model.eval(), test)["accuracy"]
    pk.save(model, cache)
    info.write_text(json.dumps({"accuracy": accuracy, "data": data, "training": DENSE}))
    return model, accuracy


def calibration(train) -> list:
    train.set_epoch(0)
    return [b for _, b in zip(range(CALIBRATION_BATCHES), train)]


def accuracy_of(model: nn.Module, test) -> float:
    return evaluate(model.eval(), test)["accuracy"]


def finetuned(model: nn.Module, test, seed: int) -> float:
    twin = copy.deepcopy(model)
    train, _ = loaders("keywords-synth", batch_size=BATCH, seed=seed)  # the seed orders the data
    fit(twin, train, **FINETUNE, seed=seed, progress=False)
    return accuracy_of(twin, test)


def cost(model: nn.Module) -> tuple[int, float]:
    prof = pk.profile(model.eval(), X, latency=False, memory=False, size=False)
    return prof.params, prof.macs


def latency(dense: nn.Module, pruned: nn.Module) -> dict[str, Any]:
    out = {}
    for batch, runs in LATENCY.items():
        x = torch.randn(batch, 1, 40, 101, generator=torch.Generator().manual_seed(batch))
        timing = pk.metrics.compare_latency(dense, pruned, x, runs=runs, threads=1)
        out[str(batch)] = {k: timing[k] for k in ("a_ms", "b_ms", "speedup")}
    return out


def run_case(scope: str, macs: float, ctx: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    model = copy.deepcopy(ctx["dense"])
    start = time.perf_counter()
    result = pk.prune(
        model, X, target={"macs": macs}, importance="l2", scope=scope, data=ctx["calib"]
    )
    prune_s = time.perf_counter() - start
    model = result.model.eval()
    recal = copy.deepcopy(model)
    pk.recalibrate_bn(recal, ctx["calib"])
    params, pruned_macs = cost(model)
    return {
        "scope": scope,
        "target_macs": macs,
        "prune_s": prune_s,
        "verified": bool(result.verified),
        "params": params,
        "macs": pruned_macs,
        "macs_kept": pruned_macs / ctx["dense_macs"],
        "acc_pruned": accuracy_of(model, ctx["test"]),
        "acc_recalibrated": accuracy_of(recal, ctx["test"]),
        # Fine-tuning starts from the recalibrated model (BN statistics of the new widths).
        "acc_finetuned": {str(s): finetuned(recal, ctx["test"], s) for s in seeds},
        "latency": latency(ctx["dense"], recal),
    }


def sweep(args) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    train, test = loaders("keywords-synth", batch_size=BATCH)
    dense, dense_acc = dense_model(train, test, cache_root() / "benchmarks" / "kws_dscnn")
    results = _results.of_dense(RESULTS, dense_acc, fresh=args.fresh)
    params, dense_macs = cost(dense)
    results.update(
        dense_accuracy=dense_acc,
        dense_params=params,
        dense_macs=dense_macs,
        dense_training=DENSE,
        finetune=FINETUNE,
        data={
            "name": "keywords-synth",
            "cache": cache_dir(DEFAULT_SETTINGS).name,
            "train": len(train.inputs),
            "test": len(test.inputs),
        },
        environment=pk.metrics.environment(),
    )
    _results.store(RESULTS, results)
    ctx = {"dense": dense.eval(), "dense_macs": dense_macs, "calib": calibration(train)}
    ctx["test"] = test
    print(f"dense: {dense_acc:.2%}, {params} params, {dense_macs / 1e6:.2f}M MACs", flush=True)
    for macs in args.macs:
        for scope in args.scopes:
            key = f"{scope}/{macs}"
            row = results["rows"].get(key)
            have = row["acc_finetuned"] if row else {}
            missing = [s for s in range(args.seeds) if str(s) not in have]
            if not missing:
                continue
            fresh = run_case(scope, macs, ctx, missing)
            fresh["acc_finetuned"] = {**have, **fresh["acc_finetuned"]}
            results["rows"][key] = fresh
            _results.store(RESULTS, results)
            print(format_row(key, fresh), flush=True)


def _mean(r: dict[str, Any]) -> float:
    return statistics.mean(r["acc_finetuned"].values())


def format_row(key: str, r: dict[str, Any]) -> str:
    lat = r["latency"]
    return (
        f"{key:12s} MACs kept {r['macs_kept']:.3f} pruned {r['acc_pruned']:.2%} "
        f"recal {r['acc_recalibrated']:.2%} finetuned {_mean(r):.2%} "
        f"speedup b1 {lat['1']['speedup']:.2f}x b32 {lat['32']['speedup']:.2f}x"
    )


def table(results: dict[str, Any]) -> str:
    if not results.get("rows"):
        return f"no results yet: run python benchmarks/{Path(__file__).name}"
    rows = sorted(results["rows"].values(), key=lambda r: (-r["target_macs"], r["scope"]))
    lines = [
        "| model | params | MACs | MACs kept | acc pruned | + BN recal | fine-tuned (seeds) | "
        "latency b1: pruned / dense (speedup) | latency b32: pruned / dense (speedup) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| dense | {results['dense_params']:,} | {results['dense_macs'] / 1e6:.2f}M | 1.000 | "
        f"{results['dense_accuracy']:.2%} | | | | |",
    ]
    for r in rows:
        accs = list(r["acc_finetuned"].values())
        lat = r["latency"]
        lines.append(
            f"| {r['scope']}, macs {r['target_macs']} | {r['params']:,} | "
            f"{r['macs'] / 1e6:.2f}M | {r['macs_kept']:.3f} | {r['acc_pruned']:.2%} | "
            f"{r['acc_recalibrated']:.2%} | {_results.accuracy_cell(accs)} | "
            f"{_timing(lat['1'], 2)} | {_timing(lat['32'], 1)} |"
        )
    data = results["data"]
    env = results.get("environment", {})
    head = (
        f"kws_dscnn on keywords-synth ({data['train']} training / {data['test']} test clips, "
        "12 classes, test voices unseen in training); l2 criterion; fine-tuning "
        f"{results['finetune']['epochs']} epochs; latency: median of interleaved runs, 1 thread, "
        f"{env.get('cpu', 'CPU')}; accuracies in %."
    )
    return head + "\n\n" + "\n".join(lines).replace("%", "")


def _timing(t: dict[str, float], digits: int) -> str:
    """Both models were timed in the same interleaved run: their ms and the ratio."""
    return f"{t['b_ms']:.{digits}f} / {t['a_ms']:.{digits}f} ms ({t['speedup']:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--macs", nargs="+", type=float, default=list(MACS))
    parser.add_argument("--scopes", nargs="+", choices=["local", "global", "auto"], default=SCOPES)
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per row")
    # 1 thread: on a shared 2-core machine a second OpenMP thread spins and slows training ~10x
    parser.add_argument("--threads", type=int, default=1, help="training threads")
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    if args.table or args.readme:
        marker = "speech-kws" if args.readme else None
        _results.show(table(_results.load(RESULTS)), readme_marker=marker)
        return
    sweep(args)
    print(table(_results.load(RESULTS)))


if __name__ == "__main__":
    main()
