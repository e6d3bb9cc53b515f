"""Does the speedup follow the MACs in PyTorch's own deployment path?

Eager PyTorch runs BatchNorm and ReLU unfused and converts each convolution's input to oneDNN's
blocked layout and back, so a pruned model's speedup falls short of its MACs reduction. Here the
unpruned and the pruned model (l2, local, `round_to=8`) are both traced, frozen
(`torch.jit.freeze`: BatchNorm folded into the convolutions) and passed through
`torch.jit.optimize_for_inference` (convolutions kept in oneDNN's layout between layers), then
timed interleaved, next to the same pair in eager mode. Latency does not depend on the weights'
values, so the models keep their initial weights (no training needed).

    python benchmarks/torchscript_speed.py          # vgg and resnet20, batch 1 and 64, 1 thread

Writes benchmarks/results/torchscript_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch

import prunekit as pk

RESULTS = Path(__file__).parent / "results" / "torchscript_speed.json"
X = torch.zeros(1, 1, 28, 28)


def deployed(model: torch.nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.no_grad():
        traced = torch.jit.trace(copy.deepcopy(model).eval(), x)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def macs(model: torch.nn.Module) -> int:
    return pk.profile(model, X, latency=False, memory=False, size=False).macs


def run(spec: str, kept: float, threads: int, runs: int) -> dict:
    torch.manual_seed(0)
    dense = pk.build_model(spec).eval()
    result = pk.prune(copy.deepcopy(dense), X, target={"macs": kept}, round_to=8, verify=False)
    pruned = result.model.eval()
    row = {"model": spec, "macs_kept": kept, "macs_reduction": macs(dense) / macs(pruned)}
    for batch in (1, 64):
        x = torch.randn(batch, 1, 28, 28)
        n = runs * 5 if batch == 1 else runs
        eager = pk.metrics.compare_latency(dense, pruned, x, runs=n, threads=threads)
        script = pk.metrics.compare_latency(
            deployed(dense, x), deployed(pruned, x), x, runs=n, threads=threads
        )
        for name, timing in (("eager", eager), ("torchscript", script)):
            row[f"{name}_b{batch}"] = {
                "dense_ms": timing["a_ms"],
                "pruned_ms": timing["b_ms"],
                "speedup": timing["speedup"],
                "of_macs_reduction": timing["speedup"] / row["macs_reduction"],
            }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["vgg", "resnet20"])
    parser.add_argument("--kept", nargs="+", type=float, default=[0.5, 0.25])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for spec in args.models:
        for kept in args.kept:
            rows.append(run(spec, kept, args.threads, args.runs))
            r = rows[-1]
            print(
                f"{spec:9s} {r['macs_reduction']:.2f}x fewer MACs: "
                + "; ".join(
                    f"{k} {v['speedup']:.2f}x ({v['of_macs_reduction']:.2f} of it)"
                    for k, v in r.items()
                    if isinstance(v, dict)
                ),
                flush=True,
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = {"environment": pk.metrics.environment(), "threads": args.threads, "rows": rows}
    RESULTS.write_text(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
