"""The default job, interrupted mid-fine-tuning and resumed, ends where an uninterrupted run does.

Runs `prunekit run` (the built-in default job) twice in fresh processes with the same seed:
once straight through, once interrupted by Ctrl-C (SIGINT) a few seconds into fine-tuning and
continued with `prunekit run --resume DIR`. Compares every metric of the two report.json files
and every tensor of the two saved models.

    python benchmarks/resume_default.py                # both runs under runs/resume-check/
    python benchmarks/resume_default.py --delay 20     # interrupt 20 s into fine-tuning

Writes benchmarks/results/resume_default.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import prunekit as pk

RESULTS = Path(__file__).parent / "results" / "resume_default.json"
PRUNEKIT = [sys.executable, "-m", "prunekit"]
METRICS = ("accuracy", "loss", "params", "macs", "nonzero_params")


def run(args: list[str]) -> int:
    return subprocess.run([*PRUNEKIT, *args], check=False).returncode


def fine_tuning_started(run_dir: Path) -> bool:
    state = run_dir / "state.json"
    if not state.is_file():
        return False
    try:
        return "prune" in json.loads(state.read_text())["stages"]
    except (json.JSONDecodeError, KeyError):  # being replaced: look again
        return False


def interrupted_run(run_dir: Path, delay: float) -> dict[str, Any]:
    """Start the job, send SIGINT `delay` s after pruning is recorded; return what happened."""
    proc = subprocess.Popen([*PRUNEKIT, "run", "--out", str(run_dir), "-q"])
    while proc.poll() is None and not fine_tuning_started(run_dir):
        time.sleep(0.5)
    if proc.poll() is not None:
        raise SystemExit(f"the run ended (exit {proc.returncode}) before fine-tuning began")
    time.sleep(delay)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(signal.SIGINT)
    code = proc.wait()
    checkpoint = run_dir / "checkpoints" / "finetune.pt"
    return {"signal_sent": sent, "exit_code": code, "checkpoint": checkpoint.is_file()}


def compare(a: Path, b: Path) -> dict[str, Any]:
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (a, b))
    metrics = {
        f"{side}.{key}": [ra[side].get(key), rb[side].get(key)]
        for side in ("dense", "pruned")
        for key in METRICS
    }
    ma, mb = pk.load(a), pk.load(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    same_tensors = sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    return {
        "metrics": metrics,
        "metrics_equal": all(x == y for x, y in metrics.values()),
        "weights_equal": same_tensors,
        "resumed": rb.get("resumed"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=Path("runs/resume-check"))
    parser.add_argument("--delay", type=float, default=10.0, help="seconds into fine-tuning")
    args = parser.parse_args()
    straight, broken = args.dir / "straight", args.dir / "interrupted"
    for d in (straight, broken):
        shutil.rmtree(d, ignore_errors=True)
    print("uninterrupted run ...", flush=True)
    if run(["run", "--out", str(straight), "-q"]) != 0:
        raise SystemExit("the uninterrupted run failed")
    print(f"interrupted run (Ctrl-C {args.delay:.0f} s into fine-tuning) ...", flush=True)
    interruption = interrupted_run(broken, args.delay)
    print(f"  {interruption}", flush=True)
    print("resuming ...", flush=True)
    if run(["run", "--resume", str(broken), "-q"]) != 0:
        raise SystemExit("the resumed run failed")
    result = {"interruption": interruption, **compare(straight, broken)}
    result["environment"] = pk.metrics.environment()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, sort_keys=True))
    for name, (x, y) in result["metrics"].items():
        print(f"{name:24s} {x!s:>24s} {y!s:>24s} {'=' if x == y else 'DIFFERENT'}")
    print(f"metrics equal: {result['metrics_equal']}; weights equal: {result['weights_equal']}")


if __name__ == "__main__":
    main()
