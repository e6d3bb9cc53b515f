"""Structured pruning accuracy on Fashion-MNIST: every prunekit criterion and scope vs Torch-Pruning.

The VGG-style CNN (5 conv + BN, 21.9M MACs) is trained once (3 epochs SGD one-cycle, cached),
then pruned to 2x and 4x fewer MACs by every configuration: accuracy right after pruning, after
BatchNorm recalibration, and after 1 epoch of SGD fine-tuning (lr 0.02, one-cycle, the same loop
for every tool); the leading configurations are fine-tuned with 3 seeds. Latency speedups at batch
1 and 64 are measured with threads pinned, interleaved with the dense model.

    python benchmarks/fmnist_structured.py                       # the whole grid (~45 min)
    python benchmarks/fmnist_structured.py --criteria l2 taylor --scopes local --budgets 2
    python benchmarks/fmnist_structured.py --round-to 8 --criteria l2 --scopes auto auto-recal
    python benchmarks/fmnist_structured.py --reconstruct --criteria l2 --scopes auto
                                            # fine-tune from the least-squares reconstruction
                                            # (no timings: same architecture as the plain rows)
    python benchmarks/fmnist_structured.py --criteria l2 --scopes local \
        --all-seeds prunekit/l2/local/2x torch-pruning/magnitude/local/2x     # more seeds for these
    python benchmarks/fmnist_structured.py --dense-reference     # the dense model through the
                                            # same fine-tuning loop (the loop's own ceiling)
    python benchmarks/fmnist_structured.py --table               # print the stored results
    python benchmarks/fmnist_structured.py --readme              # write the README table

Results are merged into benchmarks/results/fmnist_structured.json after every configuration, so
an interrupted sweep resumes where it stopped (`--fresh` recomputes). Rows are only merged with
those of the same dense model: after the cached dense model is retrained, rerun with `--fresh`
or write elsewhere with `--results PATH`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import _results  # benchmarks/_results.py, next to this script
import torch
from torch import nn

import prunekit as pk
from prunekit.data import loaders
from prunekit.models import build_model
from prunekit.recipes._cache import cache_root
from prunekit.train import evaluate, fit

RESULTS = Path(__file__).parent / "results" / "fmnist_structured.json"
CRITERIA = pk.importance.list()  # every registered criterion
TP_CRITERIA = ["magnitude", "taylor", "bn_scale"]
DENSE = {"epochs": 3, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle"}
FINETUNE = {"epochs": 1, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle"}
CALIBRATION_BATCHES = 8
RECONSTRUCTION_BATCHES = 16
X = torch.zeros(1, 1, 28, 28)


# ----------------------------------------------------------------------------- dense model
def dense_model(train, test, cache: Path) -> tuple[nn.Module, float]:
    if (cache / "prunekit.json").is_file():
        model = pk.load(cache).eval()
        return model, json.loads((cache / "accuracy.json").read_text())["accuracy"]
    torch.manual_seed(0)
    model = build_model("vgg")
    fit(model, train, **DENSE, seed=0)
    accuracy = evaluate(model.eval(), test)["accuracy"]
    pk.save(model, cache)
    (cache / "accuracy.json").write_text(json.dumps({"accuracy": accuracy}))
    return model, accuracy


# ----------------------------------------------------------------------------- pruning
def calibration(train, n: int = CALIBRATION_BATCHES) -> list:
    """The first `n` batches of epoch 0 (the same whether or not the dense model was cached)."""
    train.set_epoch(0)
    batches = []
    for i, batch in enumerate(train):
        if i >= n:
            break
        batches.append(batch)
    return batches


def pruned(tool, criterion: str, scope: str, budget: int, ctx) -> tuple[nn.Module, Any]:
    """A copy of the dense model pruned to `budget`x fewer MACs by `tool`, and its prunekit plan
    (None for Torch-Pruning), which the least-squares reconstruction needs."""
    kept, calib, round_to = 1.0 / budget, ctx["calib"], ctx["round_to"]
    if tool == "prunekit":
        return prune_prunekit(ctx["dense"], criterion, scope, kept, calib, round_to)
    return prune_torch_pruning(ctx["dense"], criterion, kept, calib, round_to), None


def prune_prunekit(dense, criterion: str, scope: str, kept: float, calib, round_to):
    model = copy.deepcopy(dense)
    result = pk.prune(
        model,
        X,
        target={"macs": kept},
        importance=criterion,
        data=calib,
        round_to=round_to,
        **scope_options(scope),
    )
    return model, result.plan


def scope_options(scope: str) -> dict[str, Any]:
    """`pk.prune` options of a benchmark scope: prunekit's scopes, and `auto-recal` (auto with
    its sensitivities measured after BatchNorm recalibration, `auto_recalibrate=True`)."""
    if scope == "auto-recal":
        return {"scope": "auto", "auto_recalibrate": True}
    return {"scope": scope}


def prune_torch_pruning(dense, criterion: str, kept: float, calib, round_to) -> nn.Module:
    """Torch-Pruning at the same MACs budget: its uniform ratio bisected to the target."""
    import torch_pruning as tp

    dense_macs, _ = tp.utils.count_ops_and_params(dense, X)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        ratio = (lo + hi) / 2
        model = _tp_prune(dense, criterion, ratio, calib, round_to)
        macs, _ = tp.utils.count_ops_and_params(model, X)
        if best is None or abs(macs / dense_macs - kept) < abs(best[1] - kept):
            best = (model, macs / dense_macs)
        if abs(macs / dense_macs - kept) < 0.005 * kept:
            break
        lo, hi = (ratio, hi) if macs / dense_macs > kept else (lo, ratio)
    return best[0]


def _tp_prune(dense, criterion: str, ratio: float, calib, round_to) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    importance = {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
    }[criterion]()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(
        model,
        X,
        importance=importance,
        pruning_ratio=ratio,
        ignored_layers=[last],
        round_to=round_to,
    )
    if criterion == "taylor":
        model.zero_grad()
        for inputs, targets in calib:
            nn.functional.cross_entropy(model(inputs), targets).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


# ----------------------------------------------------------------------------- measuring
def accuracy_of(model, test) -> float:
    return evaluate(model.eval(), test)["accuracy"]


def recalibrated_accuracy(model, calib, test) -> float:
    twin = copy.deepcopy(model)
    pk.recalibrate_bn(twin, calib)
    return accuracy_of(twin, test)


def reconstructed_accuracy(model, plan, ctx) -> float | None:
    """Accuracy after `pk.reconstruct` (least squares on RECONSTRUCTION_BATCHES); None for
    Torch-Pruning models, which have no prunekit plan."""
    if plan is None:
        return None
    twin = copy.deepcopy(model)
    pk.reconstruct(twin, ctx["dense"], plan, ctx["reconstruction"])
    return accuracy_of(twin, ctx["test"])


def finetuned_accuracy(model, plan, ctx, seed: int) -> float:
    """1 epoch of the shared fine-tuning loop (distilling from the dense model in `--distill`),
    starting from the least-squares reconstruction in `--reconstruct`."""
    twin = copy.deepcopy(model)
    if ctx["reconstruct"]:
        pk.reconstruct(twin, ctx["dense"], plan, ctx["reconstruction"])
    train, _ = loaders("fashion-mnist", batch_size=128, seed=seed)  # the seed orders the data
    teacher = ctx["dense"] if ctx["distill"] else None
    fit(twin, train, **FINETUNE, seed=seed, teacher=teacher, progress=False)
    return accuracy_of(twin, ctx["test"])


def speedups(dense, model, threads: int) -> dict[str, float]:
    """Latency speedups over the dense model at batch 1 and 64, in PyTorch's default NCHW layout
    and (`_cl`) with both models and inputs in channels_last, the faster layout for CPU
    convolutions and pooling."""
    out = {}
    last = torch.channels_last
    twins = (
        copy.deepcopy(dense).to(memory_format=last),
        copy.deepcopy(model).to(memory_format=last),
    )
    for batch in (1, 64):
        x = torch.randn(batch, 1, 28, 28)
        runs = 200 if batch == 1 else 40
        out[f"speedup_b{batch}"] = pk.metrics.compare_latency(
            dense, model, x, runs=runs, warmup=10, threads=threads
        )["speedup"]
        out[f"speedup_b{batch}_cl"] = pk.metrics.compare_latency(
            *twins, x.to(memory_format=last), runs=runs, warmup=10, threads=threads
        )["speedup"]
    return out


def ort_speedups(dense, model, threads: int) -> dict[str, float]:
    """Speedups of the ONNX exports in ONNX Runtime (which folds BatchNorm into the convolutions
    and fuses the activations, as a deployment does), interleaved with the dense export."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="fmnist-structured-") as tmp:
        for batch, runs in ((1, 200), (64, 40)):
            result = pk.export(
                model,
                Path(tmp) / f"b{batch}.onnx",
                example_inputs=torch.randn(batch, 1, 28, 28),
                latency=True,
                baseline=dense,
                threads=threads,
                runs=runs,
                warmup=10,
            )
            out[f"speedup_b{batch}_ort"] = result.latency["speedup"]
    return out


def macs_of(model) -> int:
    return pk.profile(model, X, latency=False, memory=False, size=False).macs


# ----------------------------------------------------------------------------- the sweep
def run_case(tool, criterion, scope, budget, ctx, seeds) -> dict[str, Any]:
    start = time.perf_counter()
    model, plan = pruned(tool, criterion, scope, budget, ctx)
    prune_s = time.perf_counter() - start
    row = {
        "tool": tool,
        "criterion": criterion,
        "scope": scope,
        "budget": budget,
        "round_to": ctx["round_to"],
        "distill": ctx["distill"],
        "macs_reduction": ctx["dense_macs"] / macs_of(model),
        "params": sum(p.numel() for p in model.parameters()),
        "prune_s": prune_s,
        "acc_pruned": accuracy_of(model, ctx["test"]),
        "acc_recalibrated": recalibrated_accuracy(model, ctx["calib"], ctx["test"]),
        "acc_reconstructed": reconstructed_accuracy(model, plan, ctx),
        "reconstruct": ctx["reconstruct"],
        "acc_finetuned": {str(s): finetuned_accuracy(model, plan, ctx, s) for s in seeds},
    }
    if not ctx["reconstruct"]:  # the same architecture as the plain row: timed there
        row.update(speedups(ctx["dense"], model, ctx["threads"]))
        row.update(ort_speedups(ctx["dense"], model, ctx["threads"]))
    return row


def key_of(tool, criterion, scope, budget, variant: str = "") -> str:
    return f"{tool}/{criterion}/{scope}/{budget}x{variant}"


def variant_of(round_to: int | None, distill: bool, reconstruct: bool) -> str:
    """Key suffix of a variant of the shared setup: `/r8` (round_to 8), `/kd` (distillation),
    `/ls` (fine-tuning from the least-squares reconstruction)."""
    suffix = (f"/r{round_to}" if round_to else "") + ("/kd" if distill else "")
    return suffix + ("/ls" if reconstruct else "")


def use_results(path: Path) -> None:
    """Read and write `path` instead of the default results file (e.g. a second dense model)."""
    global RESULTS
    RESULTS = path


def store(results: dict[str, Any]) -> None:
    _results.store(RESULTS, results)


def grid(args) -> list[tuple[str, str, str, int]]:
    cases = []
    for budget in args.budgets:
        for criterion in args.criteria:
            for scope in args.scopes:
                cases.append(("prunekit", criterion, scope, budget))
        if args.torch_pruning and not args.reconstruct:  # no plan to reconstruct from
            for criterion in TP_CRITERIA:
                cases.append(("torch-pruning", criterion, "local", budget))
    return cases


def leading(results, budget: int, n: int, variant: str) -> list[str]:
    """The `n` best prunekit configurations and the best Torch-Pruning one, at `budget`."""
    rows = [
        (k, r)
        for k, r in results["rows"].items()
        if r["budget"] == budget and k.endswith(f"{budget}x{variant}")
    ]

    def score(item):
        return statistics.mean(item[1]["acc_finetuned"].values())

    ours = sorted([x for x in rows if x[1]["tool"] == "prunekit"], key=score, reverse=True)[:n]
    theirs = sorted([x for x in rows if x[1]["tool"] != "prunekit"], key=score, reverse=True)[:1]
    return [k for k, _ in ours + theirs]


def sweep(args) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    train, test = loaders("fashion-mnist", batch_size=128)
    cache = cache_root() / "benchmarks" / "fmnist_vgg_dense"
    dense, dense_acc = dense_model(train, test, cache)
    results = _results.of_dense(RESULTS, dense_acc, fresh=args.fresh)
    results.update(
        dense_accuracy=dense_acc,
        dense_macs=macs_of(dense),
        finetune=FINETUNE,
        environment=pk.metrics.environment(),
    )
    ctx = {
        "dense": dense.eval(),
        "dense_macs": results["dense_macs"],
        "calib": calibration(train),
        "reconstruction": calibration(train, RECONSTRUCTION_BATCHES),
        "train": train,
        "test": test,
        "threads": args.latency_threads,
        "round_to": args.round_to,
        "distill": args.distill,
        "reconstruct": args.reconstruct,
    }
    variant = variant_of(args.round_to, args.distill, args.reconstruct)
    print(f"dense: {dense_acc:.2%}, {ctx['dense_macs'] / 1e6:.1f}M MACs", flush=True)
    if args.fill:
        fill(results, ctx, variant, args)
        return
    if args.dense_reference:
        dense_reference(results, ctx, args.seeds)
        return
    for case in grid(args):
        key = key_of(*case, variant)
        if key in results["rows"]:
            continue
        row = run_case(*case, ctx, seeds=[0])
        results["rows"][key] = row
        store(results)
        print(format_row(key, row), flush=True)
    for budget in args.budgets:
        extra = [
            k for k in args.all_seeds if k in results["rows"] and k.endswith(f"/{budget}x{variant}")
        ]
        for key in dict.fromkeys(leading(results, budget, args.leading, variant) + extra):
            row = results["rows"][key]
            missing = [s for s in range(args.seeds) if str(s) not in row["acc_finetuned"]]
            if not missing:
                continue
            tool, criterion, scope = key.split("/")[:3]
            again = run_case(tool, criterion, scope, budget, ctx, seeds=missing)
            row["acc_finetuned"].update(again["acc_finetuned"])
            store(results)
            print(format_row(key, row), flush=True)


def dense_reference(results, ctx, seeds: int) -> None:
    """The unpruned model through the same 1-epoch fine-tuning loop, per seed: what the loop does
    to a model that lost nothing, the reference for "no loss against the dense model"."""
    done = results.setdefault("dense_finetuned", {})
    for seed in range(seeds):
        if str(seed) in done:
            continue
        twin = copy.deepcopy(ctx["dense"])
        train, _ = loaders("fashion-mnist", batch_size=128, seed=seed)
        fit(twin, train, **FINETUNE, seed=seed, progress=False)
        done[str(seed)] = accuracy_of(twin, ctx["test"])
        store(results)
        print(f"dense fine-tuned 1 ep, seed {seed}: {done[str(seed)]:.2%}", flush=True)


FILLED = ("acc_reconstructed", "speedup_b1_cl", "speedup_b64_cl", "speedup_b64_ort")


def fill(results, ctx, variant: str, args) -> None:
    """Add the measurements later versions introduced to stored rows (those of `--criteria`,
    `--scopes`, `--budgets`; Torch-Pruning rows by their criterion) without fine-tuning again:
    the pruning is deterministic, so each configuration is re-pruned and measured."""
    for key, row in results["rows"].items():
        if not key.endswith(f"x{variant}") or all(f in row for f in FILLED):
            continue
        if row.get("reconstruct"):  # timed as its plain row
            continue
        if row["criterion"] not in args.criteria or row["budget"] not in args.budgets:
            continue
        if row["tool"] == "prunekit" and row["scope"] not in args.scopes:
            continue
        model, plan = pruned(row["tool"], row["criterion"], row["scope"], row["budget"], ctx)
        if "acc_reconstructed" not in row:
            row["acc_reconstructed"] = reconstructed_accuracy(model, plan, ctx)
        if "speedup_b64_cl" not in row:
            row.update(speedups(ctx["dense"], model, ctx["threads"]))
        row.update(ort_speedups(ctx["dense"], model, ctx["threads"]))
        store(results)
        print(format_row(key, row), flush=True)


# ----------------------------------------------------------------------------- reporting
def format_row(key: str, row: dict[str, Any]) -> str:
    accs = list(row["acc_finetuned"].values())
    return (
        f"{key:38s} MACs x{row['macs_reduction']:.2f} pruned {row['acc_pruned']:.2%} "
        f"recal {row['acc_recalibrated']:.2%} recon {_pct(row.get('acc_reconstructed'))} "
        f"finetuned {statistics.mean(accs):.2%} (n={len(accs)}) "
        f"speedup b1 {_x(row.get('speedup_b1'))} b64 {_x(row.get('speedup_b64'))}"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _setup(r: dict[str, Any]) -> str:
    parts = [f"round_to {r['round_to']}"] if r.get("round_to") else []
    parts += ["distilled"] if r.get("distill") else []
    parts += ["from least squares"] if r.get("reconstruct") else []
    return ", ".join(parts) or "plain"


def _mean(r: dict[str, Any]) -> float:
    return statistics.mean(r["acc_finetuned"].values())


def table(results: dict[str, Any], compact: bool = False) -> str:
    """Markdown: every row, or (`compact`) per budget and setup the 3 best prunekit rows,
    prunekit l2/local and every Torch-Pruning row."""
    lines = [
        "| budget | setup | tool | criterion | scope | MACs ↓ | acc pruned | + BN recal | "
        "+ least squares | fine-tuned 1 ep (seeds) | speedup b1 | speedup b64 | "
        "b64 channels_last | b1 ONNX Runtime | b64 ONNX Runtime |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(results["rows"].values(), key=lambda r: (r["budget"], _setup(r), -_mean(r)))
    if compact:
        rows = [r for r in rows if _shown(r, rows)]
    for r in rows:
        accs = list(r["acc_finetuned"].values())
        lines.append(
            f"| {r['budget']}x | {_setup(r)} | {r['tool']} | {r['criterion']} | {r['scope']} | "
            f"{r['macs_reduction']:.2f}x | {r['acc_pruned']:.2%} | {r['acc_recalibrated']:.2%} | "
            f"{_pct(r.get('acc_reconstructed'))} | {_results.accuracy_cell(accs).replace('%', '')} | "
            f"{_x(r.get('speedup_b1'))} | {_x(r.get('speedup_b64'))} | {_x(r.get('speedup_b64_cl'))} | "
            f"{_x(r.get('speedup_b1_ort'))} | {_x(r.get('speedup_b64_ort'))} |"
        )
    reference = results.get("dense_finetuned")
    loop = (
        f" The dense model through the same fine-tuning loop: "
        f"{_results.accuracy_cell(list(reference.values()))}."
        if reference
        else ""
    )
    head = (
        f"Dense: {results['dense_accuracy']:.2%} test accuracy, "
        f"{results['dense_macs'] / 1e6:.1f}M MACs.{loop} Accuracies in %, mean ± std over seeds."
    )
    return head + "\n\n" + "\n".join(lines).replace("%", "")


def _shown(r: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    if r["tool"] != "prunekit" or (r["criterion"], r["scope"]) == ("l2", "local"):
        return True
    peers = [p for p in rows if p["tool"] == "prunekit" and p["budget"] == r["budget"]]
    peers = [p for p in peers if _setup(p) == _setup(r)]
    return r in sorted(peers, key=_mean, reverse=True)[:3]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--criteria", nargs="+", default=CRITERIA)
    parser.add_argument("--scopes", nargs="+", default=["local", "global"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds, leading configs")
    parser.add_argument("--leading", type=int, default=2, help="prunekit configs given all seeds")
    parser.add_argument(
        "--all-seeds",
        nargs="+",
        default=[],
        metavar="KEY",
        help="stored rows (e.g. prunekit/l2/local/2x) to give all seeds besides the leading ones",
    )
    parser.add_argument("--round-to", type=int, default=None, help="both tools")
    parser.add_argument("--distill", action="store_true", help="fine-tune distilling from dense")
    parser.add_argument(
        "--reconstruct",
        action="store_true",
        help="fine-tune from the least-squares reconstruction (prunekit only)",
    )
    parser.add_argument("--threads", type=int, default=2, help="training threads")
    parser.add_argument("--latency-threads", type=int, default=1)
    parser.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false")
    parser.add_argument("--fresh", action="store_true", help="ignore stored results")
    parser.add_argument(
        "--fill",
        action="store_true",
        help="add missing measurements to stored rows (no fine-tuning)",
    )
    parser.add_argument(
        "--dense-reference",
        action="store_true",
        help="fine-tune the dense model with the same loop (--seeds seeds) and store it",
    )
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--readme", action="store_true")
    parser.add_argument(
        "--marker",
        default="fmnist-structured",
        help="README section (between <!-- MARKER --> lines) that --readme writes",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file (JSON)")
    args = parser.parse_args()
    use_results(args.results)
    if args.table or args.readme:
        marker = args.marker if args.readme else None
        _results.show(table(_results.load(RESULTS), compact=args.readme), readme_marker=marker)
        return
    sweep(args)
    print(table(_results.load(RESULTS)))


if __name__ == "__main__":
    main()
