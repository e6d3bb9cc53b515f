"""How well the latency model predicts pruned models' latency on this machine.

For each model: fit `pk.metrics.LatencyModel` once (per-layer tables over channel counts), then
calibrate it with one measured pruned copy (local scope, MACs 0.5: how much of the non-layer time
shrinks), prune copies to several MACs budgets with local and global scopes, and compare the
predicted latency (raw, calibrated, and calibrated in exact mode, where channel counts off the
table's grid are timed once instead of interpolated) with the measured one (median, threads
pinned), and the predicted fraction of the unpruned latency with the measured one (the pruned
copy timed interleaved with the unpruned model, so that slow drift of the machine cancels; a
latency budget is such a fraction).

    python benchmarks/latency_model.py                # vgg, resnet20 (batch 64), resnet18 (batch 1)
    python benchmarks/latency_model.py --models vgg --quick

Writes benchmarks/results/latency_model.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

import prunekit as pk

RESULTS = Path(__file__).parent / "results" / "latency_model.json"
MODELS = {
    "vgg": ("vgg", (64, 1, 28, 28)),
    "resnet20": ("resnet20", (64, 1, 28, 28)),
    "resnet18": ("torchvision:resnet18", (1, 3, 224, 224)),
}


def run(name: str, budgets: list[float], threads: int, runs: int) -> dict:
    spec, shape = MODELS[name]
    torch.manual_seed(0)
    model = pk.build_model(spec).eval()
    x = torch.randn(*shape)
    start = time.perf_counter()
    lm = pk.metrics.LatencyModel.fit(model, x, threads=threads, runs=runs, exact=False)
    fit_s = time.perf_counter() - start
    probe = pk.prune(copy.deepcopy(model), x[:1], ratio=0.3, verify=False).model.eval()
    probe_ms = pk.metrics.measure_latency(probe, x, runs=runs * 2, threads=threads)["median_ms"]
    tuned = lm.calibrated(probe, probe_ms)
    # exact mode: counts off the grid are timed (once each) instead of interpolated
    exact = dataclasses.replace(lm, exact=True).calibrated(probe, probe_ms)
    rows = []
    for scope in ("local", "global"):
        for budget in budgets:
            pruned = pk.prune(
                copy.deepcopy(model), x[:1], target={"macs": budget}, scope=scope, verify=False
            ).model.eval()
            # interleaved with the unpruned model: the fraction kept is immune to slow drift
            both = pk.metrics.compare_latency(model, pruned, x, runs=runs * 2, threads=threads)
            measured = {"median_ms": both["b_ms"]}
            raw, calibrated = lm.predict(pruned), tuned.predict(pruned)
            timed = exact.predict(pruned)
            fraction = both["b_ms"] / both["a_ms"]
            predicted_fraction = timed / exact.predict(model)
            rows.append(
                {
                    "scope": scope,
                    "macs_kept": budget,
                    "measured_ms": measured["median_ms"],
                    "dense_ms_interleaved": both["a_ms"],
                    "predicted_raw_ms": raw,
                    "predicted_ms": calibrated,
                    "error_raw": raw / measured["median_ms"] - 1.0,
                    "error": calibrated / measured["median_ms"] - 1.0,
                    "predicted_exact_ms": timed,
                    "error_exact": timed / measured["median_ms"] - 1.0,
                    "measured_fraction": fraction,
                    "predicted_fraction": predicted_fraction,
                    "error_fraction": predicted_fraction / fraction - 1.0,
                }
            )
            print(
                f"{name:9s} {scope:6s} MACs {budget:.2f}: measured {measured['median_ms']:.2f} ms"
                f" predicted {calibrated:.2f} ms ({rows[-1]['error']:+.1%}; "
                f"uncalibrated {rows[-1]['error_raw']:+.1%}; exact {rows[-1]['error_exact']:+.1%})"
                f"; fraction of the dense latency {fraction:.3f}, predicted "
                f"{predicted_fraction:.3f} ({rows[-1]['error_fraction']:+.1%})",
                flush=True,
            )
    errors = [abs(r["error"]) for r in rows]
    exact_errors = [abs(r["error_exact"]) for r in rows]
    fraction_errors = [abs(r["error_fraction"]) for r in rows]
    return {
        "input_shape": list(shape),
        "threads": threads,
        "fit_seconds": fit_s,
        "dense_ms": lm.measured_ms,
        "remainder_ms": lm.remainder_ms,
        "fixed_ms": tuned.fixed_ms,
        "rows": rows,
        "mean_abs_error": statistics.mean(errors),
        "max_abs_error": max(errors),
        "mean_abs_error_exact": statistics.mean(exact_errors),
        "max_abs_error_exact": max(exact_errors),
        "mean_abs_error_fraction": statistics.mean(fraction_errors),
        "max_abs_error_fraction": max(fraction_errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.75, 0.5, 0.25])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    runs = 5 if args.quick else 20
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["environment"] = pk.metrics.environment()
    for name in args.models:
        results[name] = run(name, args.budgets, args.threads, runs)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
        r = results[name]
        print(
            f"{name}: fit {r['fit_seconds']:.1f} s, mean |error| {r['mean_abs_error']:.1%}, "
            f"max {r['max_abs_error']:.1%}; exact mode: mean {r['mean_abs_error_exact']:.1%}, "
            f"max {r['max_abs_error_exact']:.1%}; fraction of the dense latency (exact mode, "
            f"interleaved): mean {r['mean_abs_error_fraction']:.1%}, "
            f"max {r['max_abs_error_fraction']:.1%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
