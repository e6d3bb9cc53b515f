"""One-shot (magnitude, Wanda, SparseGPT) and structured pruning of a small causal LM, by perplexity.

A byte-level Llama (hidden 256, 4 layers, 8 query heads sharing 4 KV heads (GQA), MLP 688,
~3.0M parameters) is trained here once with AdamW + warmup/cosine on the prose of the Debian
`fortunes` package (prunekit.data.text_loaders: 90% of the records; the other 10% are held out)
and cached. Then, each from a copy of the dense model:

- one-shot: prunekit.unstructured.prune_layerwise at 50% unstructured and at 2:4 with magnitude,
  Wanda and SparseGPT, on 128 calibration sequences of 128 tokens from the TRAIN split;
- structured: pk.prune(ratio=0.3, attention="heads", importance="l2") removes whole KV groups
  (with their query heads) and 30% of the MLP channels, the hidden size kept; then a recovery
  fine-tune of 10% of the original training steps (AdamW, warmup/cosine, half the peak lr);
- control: the dense model given the same fine-tune (how much of the recovery is extra training).

Perplexity is measured on every held-out window (128 bytes each, in order).

    python benchmarks/llm_oneshot.py                # train (or load the cache) and run everything
    python benchmarks/llm_oneshot.py --steps 800    # train the dense model less (default 3000)
    python benchmarks/llm_oneshot.py --fresh        # retrain and recompute every row
    python benchmarks/llm_oneshot.py --arch gpt2    # the same size in GPT-2's architecture
    python benchmarks/llm_oneshot.py --table        # print the stored results
    python benchmarks/llm_oneshot.py --readme       # write the README section

Results are merged into benchmarks/results/llm_oneshot.json after every row.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import _results  # benchmarks/_results.py, next to this script
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import prunekit as pk
from prunekit.data import ByteTokenizer, text_loaders
from prunekit.metrics import perplexity
from prunekit.recipes._cache import cache_key, cache_root
from prunekit.unstructured import prune_layerwise

RESULTS = Path(__file__).parent / "results" / "llm_oneshot.json"
MODEL = {
    "vocab_size": ByteTokenizer.vocab_size,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "bos_token_id": ByteTokenizer.eos_id,
    "eos_token_id": ByteTokenizer.eos_id,
}
# The same size in GPT-2's architecture (LayerNorm, GELU MLP of 4x the hidden size, learned
# positions, no GQA): `--arch gpt2`.
GPT2_MODEL = {
    "vocab_size": ByteTokenizer.vocab_size,
    "n_embd": 256,
    "n_inner": 1024,
    "n_layer": 4,
    "n_head": 8,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "tie_word_embeddings": False,
    "bos_token_id": ByteTokenizer.eos_id,
    "eos_token_id": ByteTokenizer.eos_id,
}
ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, MODEL, RESULTS),
    "gpt2": (GPT2Config, GPT2LMHeadModel, GPT2_MODEL, RESULTS.with_name("llm_oneshot_gpt2.json")),
}
DATA = {"seq_len": 128, "batch_size": 16, "held_out": 0.1, "split_seed": 0, "seed": 0}
TRAIN = {"lr": 2e-3, "warmup": 0.05, "min_lr": 0.1, "weight_decay": 0.1, "grad_clip": 1.0}
# Recovery after structured pruning: 10% of the training steps, half the peak learning rate
# (fixed before any measurement; nothing here is tuned on the held-out split).
RECOVERY = {"fraction": 0.1, "lr": 1e-3, "warmup": 0.05, "min_lr": 0.1, "weight_decay": 0.1}
CALIBRATION = {"sequences": 128, "seed": 1}
ONESHOT = [
    (method, pattern)
    for pattern in ("unstructured", "2:4")
    for method in ("magnitude", "wanda", "sparsegpt")
]
STRUCTURED = {
    "ratio": 0.3,
    "attention": "heads",
    "importance": "l2",
    # outputs of o_proj / down_proj are the residual stream: keeping them keeps the hidden size
    "ignore": ["*.o_proj", "*.down_proj"],
}
# GPT-2: the outputs of the attention and MLP projections back (`c_proj`) are the residual stream
GPT2_STRUCTURED = {**STRUCTURED, "ignore": ["*.attn.c_proj", "*.mlp.c_proj"]}
SEED = 0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_lambda(steps: int, warmup: float, min_lr: float):
    """Linear warm-up then cosine decay to `min_lr` x the peak."""
    warm = max(1, round(warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, steps - warm)
        return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def train_lm(model, train, steps: int, cfg: dict[str, Any], label: str) -> list[float]:
    """AdamW (no decay on norms) + warmup/cosine; returns the loss of every step."""
    torch.manual_seed(SEED)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, cfg["warmup"], cfg["min_lr"]))
    model.train()
    losses: list[float] = []
    epoch, batches = train.epoch, iter(train)
    start = time.perf_counter()
    every = max(1, steps // 20)
    for step in range(steps):
        ids = next(batches, None)
        if ids is None:  # next epoch, reshuffled
            epoch += 1
            train.set_epoch(epoch)
            batches = iter(train)
            ids = next(batches)
        loss = model(ids, labels=ids, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.get("grad_clip", 1.0))
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            spent = time.perf_counter() - start
            recent = sum(losses[-every:]) / len(losses[-every:])
            log(
                f"{label}: step {step + 1}/{steps} loss {recent:.3f} "
                f"({spent:.0f}s, ~{spent / (step + 1) * (steps - step - 1):.0f}s left)"
            )
    model.eval()
    return losses


def dense_model(train, steps: int, fresh: bool, arch: str = "llama") -> tuple[Any, dict[str, Any]]:
    """The trained dense model from the cache, or trained now and cached (safetensors + JSON)."""
    config_cls, model_cls, model_cfg, _ = ARCHS[arch]
    setup = {"model": model_cfg, "data": DATA, "train": TRAIN, "steps": steps, "seed": SEED}
    setup["versions"] = {"torch": torch.__version__, "prunekit": pk.__version__}
    key = cache_key(setup)
    entry = cache_root() / "benchmarks" / "llm_tiny" / key
    if (entry / "train.json").is_file() and not fresh:
        log(f"dense model from the cache: {entry}")
        model = model_cls.from_pretrained(entry).eval()
        return model, json.loads((entry / "train.json").read_text())
    torch.manual_seed(SEED)
    model = model_cls(config_cls(**model_cfg))
    n = sum(p.numel() for p in model.parameters())
    log(f"training the dense model: {n / 1e6:.2f}M parameters, {steps} steps")
    start = time.perf_counter()
    losses = train_lm(model, train, steps, TRAIN, "dense")
    info = {"setup": setup, "key": key, "seconds": time.perf_counter() - start}
    info["final_loss"] = sum(losses[-20:]) / len(losses[-20:])
    # Written into a temporary sibling and renamed, so a crash never leaves half an entry.
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=entry.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "train.json").write_text(json.dumps(info, indent=1))
        if entry.exists():
            shutil.rmtree(entry)
        os.rename(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"dense model cached in {entry}")
    return model, info


def calibration(train) -> list[torch.Tensor]:
    """The first `sequences` windows of the TRAIN split in a fixed shuffled order."""
    order = torch.randperm(train.n, generator=torch.Generator().manual_seed(CALIBRATION["seed"]))
    windows = train.windows[order[: CALIBRATION["sequences"]]]
    return list(windows.split(DATA["batch_size"]))


def linear_sparsity(model) -> float:
    """Fraction of zeros in the weights of the decoder layers' linear layers (GPT-2's `Conv1D`)."""
    zeros = total = 0
    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    for module in blocks.modules():
        if type(module).__name__ in ("Linear", "Conv1D"):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run_oneshot(method: str, pattern: str, ctx: dict[str, Any]) -> dict[str, Any]:
    model = copy.deepcopy(ctx["dense"])
    start = time.perf_counter()
    sparsity = 0.5 if pattern == "unstructured" else None  # N:M implies its sparsity
    prune_layerwise(model, ctx["calib"], sparsity, method, pattern, progress=False)
    seconds = time.perf_counter() - start
    ppl = perplexity(model, ctx["held"])
    return {
        "kind": "oneshot",
        "method": method,
        "pattern": pattern,
        "sparsity": linear_sparsity(model),
        "prune_s": seconds,
        "perplexity": ppl,
        "increase": ppl / ctx["dense_ppl"] - 1,
    }


def structured_settings(arch: str) -> dict[str, Any]:
    return GPT2_STRUCTURED if arch == "gpt2" else STRUCTURED


def pruned_shapes(model, arch: str) -> dict[str, Any]:
    """Hidden size, heads and MLP width per layer of a (pruned) model."""
    if arch == "gpt2":
        blocks = model.transformer.h
        return {
            "hidden": int(blocks[0].attn.c_attn.weight.shape[0]),
            "heads": [int(b.attn.num_heads) for b in blocks],
            "head_dim": [int(b.attn.head_dim) for b in blocks],
            "intermediate": [int(b.mlp.c_fc.weight.shape[1]) for b in blocks],
        }
    cfg, layers = model.config, model.model.layers
    return {
        "hidden": int(layers[0].self_attn.q_proj.weight.shape[1]),
        "query_heads": [int(m.self_attn.q_proj.weight.shape[0]) // cfg.head_dim for m in layers],
        "kv_heads": [int(m.self_attn.k_proj.weight.shape[0]) // cfg.head_dim for m in layers],
        "intermediate": [int(m.mlp.up_proj.weight.shape[0]) for m in layers],
    }


def config_sizes(cfg, arch: str) -> dict[str, Any]:
    """Head counts and MLP width in the config (the fields `save_pretrained` writes)."""
    if arch == "gpt2":
        return {"num_attention_heads": cfg.n_head, "intermediate_size": cfg.n_inner}
    return {
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "intermediate_size": cfg.intermediate_size,
    }


def run_structured(ctx: dict[str, Any], steps: int, arch: str = "llama") -> dict[str, Any]:
    model = copy.deepcopy(ctx["dense"])
    ids = ctx["calib"][0][:1]
    settings = structured_settings(arch)
    start = time.perf_counter()
    result = pk.prune(model, (ids,), example_kwargs={"use_cache": False}, **settings)
    seconds = time.perf_counter() - start
    model = result.model
    cfg, dense_cfg = model.config, ctx["dense"].config
    shapes = pruned_shapes(model, arch)
    log(f"structured: pruned in {seconds:.1f}s, verified={result.verified} {shapes}")
    before = perplexity(model, ctx["held"])
    log(f"structured: perplexity before recovery {before:.3f}")
    recovery_steps = int(RECOVERY["fraction"] * steps)
    ctx["train"].set_epoch(1000)  # an order the dense training did not use
    losses = train_lm(model, ctx["train"], recovery_steps, RECOVERY, "recovery")
    after = perplexity(model, ctx["held"])
    round_trip = save_pretrained_round_trip(model, list(itertools.islice(ctx["held"], 4)))
    return {
        "kind": "structured",
        "settings": dict(settings),
        "verified": bool(result.verified),
        "max_error": float(result.max_error) if result.max_error is not None else None,
        "prune_s": seconds,
        "shapes": shapes,
        "config": {**config_sizes(cfg, arch), "hidden_size": cfg.hidden_size},
        "dense_config": config_sizes(dense_cfg, arch),
        "params_kept": params(model) / params(ctx["dense"]),
        "save_pretrained_round_trip": round_trip,
        "recovery_steps": recovery_steps,
        "recovery_final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "perplexity_pruned": before,
        "perplexity": after,
        "increase": after / ctx["dense_ppl"] - 1,
    }


def save_pretrained_round_trip(model, sample: list) -> str:
    """ "ok" when the model reloaded by `from_pretrained` gives the same perplexity, else why not
    (transformers refuses some configs outright, e.g. a hidden size its head count does not
    divide)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            reloaded = type(model).from_pretrained(tmp).eval()
            change = abs(perplexity(reloaded, sample) / perplexity(model, sample) - 1)
    except Exception as error:  # noqa: BLE001 - reported, not raised
        return f"{type(error).__name__}: {error.__cause__ or error}"
    return "ok" if change < 1e-5 else f"perplexity changed by {change:.1e}"


def sweep(args) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    train, held = text_loaders(**DATA)
    held = list(held)[: args.eval_batches] if args.eval_batches else held
    dense, info = dense_model(train, args.steps, args.fresh, args.arch)
    results_file = ARCHS[args.arch][3]
    setup = {
        "dense_key": info["key"],
        "eval_batches": args.eval_batches,
        "calibration": CALIBRATION,
        "recovery": RECOVERY,
        "structured": structured_settings(args.arch),
    }
    stored = _results.load(results_file)
    results = stored if stored.get("setup") == setup and not args.fresh else {"rows": {}}
    ctx = {"dense": dense, "train": train, "held": held, "calib": calibration(train)}
    if "dense_perplexity" not in results:
        log("dense: measuring held-out perplexity")
        results["dense_perplexity"] = perplexity(dense, held)
    ctx["dense_ppl"] = results["dense_perplexity"]
    results.update(
        setup=setup,
        model=ARCHS[args.arch][2],
        arch=args.arch,
        data=DATA,
        train=TRAIN,
        steps=args.steps,
        train_seconds=info["seconds"],
        train_final_loss=info["final_loss"],
        threads=args.threads,
        dense_params=params(dense),
        held_out_tokens=sum(int(b.numel()) for b in held),
        environment=pk.metrics.environment(),
    )
    _results.store(results_file, results)
    log(f"dense: held-out perplexity {ctx['dense_ppl']:.3f}")
    for method, pattern in ONESHOT:
        key = f"{method}/{pattern}"
        if key in results["rows"]:
            continue
        log(f"{key}: pruning")
        results["rows"][key] = row = run_oneshot(method, pattern, ctx)
        _results.store(results_file, results)
        log(
            f"{key}: sparsity {row['sparsity']:.3f} perplexity {row['perplexity']:.3f} "
            f"(+{row['increase']:.1%} over dense) in {row['prune_s']:.1f}s"
        )
    if "structured" not in results["rows"]:
        log("structured: pruning 30% of heads and MLP channels")
        results["rows"]["structured"] = row = run_structured(ctx, args.steps, args.arch)
        _results.store(results_file, results)
        log(
            f"structured: perplexity {row['perplexity_pruned']:.3f} pruned, "
            f"{row['perplexity']:.3f} after {row['recovery_steps']} recovery steps "
            f"(+{row['increase']:.1%} over dense)"
        )
    if "dense_continued" not in results["rows"]:
        # Control: the dense model trained for the same recovery steps, so that the table shows
        # how much of the recovery is plain extra training of an under-trained model.
        log("dense control: the recovery fine-tune applied to the dense model")
        model = copy.deepcopy(dense)
        train.set_epoch(1000)
        steps = int(RECOVERY["fraction"] * args.steps)
        train_lm(model, train, steps, RECOVERY, "dense control")
        ppl = perplexity(model, held)
        results["rows"]["dense_continued"] = {"kind": "control", "steps": steps, "perplexity": ppl}
        _results.store(results_file, results)
        log(f"dense control: perplexity {ppl:.3f} after {steps} more steps")
    print(table(results))


def table(results: dict[str, Any]) -> str:
    rows = results.get("rows", {})
    if not rows:
        return f"no results yet: run python benchmarks/{Path(__file__).name}"
    dense = results["dense_perplexity"]
    lines = [
        "| pruning | method | sparsity | held-out perplexity | increase over dense |",
        "|---|---|---|---|---|",
        f"| none (dense) | - | 0 | {dense:.3f} | - |",
    ]
    for method, pattern in ONESHOT:
        r = rows.get(f"{method}/{pattern}")
        if r is not None:
            label = "50% unstructured" if pattern == "unstructured" else pattern
            lines.append(
                f"| {label} | {method} | {r['sparsity']:.3f} | {r['perplexity']:.3f} | "
                f"+{r['increase']:.1%} |"
            )
    s = rows.get("structured")
    if s is not None:
        c, d = s["config"], s["dense_config"]
        kv = (
            f" (KV {d['num_key_value_heads']}→{c['num_key_value_heads']})"
            if "num_key_value_heads" in d
            else ""
        )
        what = (
            f"heads {d['num_attention_heads']}→{c['num_attention_heads']}{kv}, "
            f"MLP {d['intermediate_size']}→{c['intermediate_size']}"
        )
        lines.append(
            f"| structured 30%: {what} | l2 | {1 - s['params_kept']:.3f} of params | "
            f"{s['perplexity_pruned']:.3f} | +{s['perplexity_pruned'] / dense - 1:.1%} |"
        )
        lines.append(
            f"| + recovery fine-tune ({s['recovery_steps']} steps) | l2 | "
            f"{1 - s['params_kept']:.3f} of params | {s['perplexity']:.3f} | "
            f"+{s['increase']:.1%} |"
        )
    c = rows.get("dense_continued")
    if c is not None:
        lines.append(
            f"| control: dense + the same fine-tune ({c['steps']} steps) | - | 0 | "
            f"{c['perplexity']:.3f} | {c['perplexity'] / dense - 1:+.1%} |"
        )
    m = results["model"]
    if results.get("arch", "llama") == "gpt2":
        what = (
            f"Byte-level GPT-2 ({results['dense_params'] / 1e6:.2f}M parameters: hidden "
            f"{m['n_embd']}, {m['n_layer']} layers, {m['n_head']} heads, MLP {m['n_inner']})"
        )
    else:
        what = (
            f"Byte-level Llama ({results['dense_params'] / 1e6:.2f}M parameters: hidden "
            f"{m['hidden_size']}, {m['num_hidden_layers']} layers, {m['num_attention_heads']} "
            f"heads / {m['num_key_value_heads']} KV heads, MLP {m['intermediate_size']})"
        )
    head = (
        f"{what} trained "
        f"{results['steps']} steps of {results['data']['batch_size']}x{results['data']['seq_len']}"
        f" bytes on the prose of Debian `fortunes`; perplexity per byte on "
        f"{results['held_out_tokens']:,} held-out bytes. One-shot: 128 calibration sequences "
        "from the training split; sparsity counted over the decoder layers' linear weights."
    )
    return head + "\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3000, help="dense training steps")
    parser.add_argument("--arch", choices=list(ARCHS), default="llama")
    parser.add_argument(
        "--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine"
    )
    parser.add_argument(
        "--eval-batches", type=int, default=None, help="held-out batches (default: all)"
    )
    parser.add_argument("--fresh", action="store_true", help="retrain and recompute every row")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    if args.table or args.readme:
        suffix = "" if args.arch == "llama" else f"-{args.arch}"
        marker = f"llm-oneshot{suffix}" if args.readme else None
        _results.show(table(_results.load(ARCHS[args.arch][3])), readme_marker=marker)
        return
    sweep(args)


if __name__ == "__main__":
    main()
