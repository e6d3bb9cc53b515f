"""Model coverage of the structured engine, side by side with Torch-Pruning where installed.

For every model: groups, blocked ops, MACs before -> after at ratio 0.5, trace / prune / verify
time, verified, max error, output shape kept. Each (model, tool) runs in its own subprocess with a
time limit, so a crash or a hang is recorded instead of stopping the sweep.

    python benchmarks/coverage.py --suite torchvision          # 80 classification models
    python benchmarks/coverage.py --suite all --tools prunekit,torch-pruning
    python benchmarks/coverage.py --only resnet18 --suite torchvision

Writes benchmarks/results/coverage.json (merged with earlier runs, keyed by suite/model/tool)
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "coverage.json"

TIMM_MODELS = [
    "resnet50",
    "efficientnet_b0",
    "convnext_atto",
    "deit_tiny_patch16_224",
    "vit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "regnety_002",
    "regnetx_002",
    "mobilenetv3_large_100",
    "ghostnet_100",
    "levit_128s",
    "poolformer_s12",
    "mixer_s16_224",
    "repvgg_a0",
    "mobilevit_xs",
    "dla34",
    "cspresnet50",
    "efficientformer_l1",
    "fastvit_t8",
    "edgenext_xx_small",
]


HF_MODELS = ["bert", "gpt2", "llama-gqa", "vit", "whisper-encoder"]


def build_hf(name: str):
    """A small Hugging Face model from a config (random init), its inputs and task check."""
    import torch
    import transformers as T

    T.logging.set_verbosity_error()
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (1, 8))
    if name == "bert":
        cfg = T.BertConfig(
            vocab_size=100,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=64,
        )
        return T.BertForSequenceClassification(cfg).eval(), (ids,), {}
    if name == "gpt2":
        cfg = T.GPT2Config(vocab_size=100, n_embd=128, n_layer=2, n_head=4, n_positions=64)
        return T.GPT2LMHeadModel(cfg).eval(), (ids,), {"use_cache": False}
    if name == "llama-gqa":
        cfg = T.LlamaConfig(
            vocab_size=100,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=256,
            max_position_embeddings=64,
        )
        return T.LlamaForCausalLM(cfg).eval(), (ids,), {"use_cache": False}
    if name == "vit":
        cfg = T.ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            num_labels=5,
        )
        return T.ViTForImageClassification(cfg).eval(), (torch.randn(1, 3, 32, 32),), {}
    if name == "whisper-encoder":
        cfg = T.WhisperConfig(
            vocab_size=100,
            d_model=128,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=256,
            decoder_ffn_dim=256,
            num_mel_bins=16,
            max_source_positions=16,
            pad_token_id=0,
            num_labels=4,
        )
        return T.WhisperForAudioClassification(cfg).eval(), (torch.randn(1, 16, 32),), {}
    raise ValueError(name)


def run_prunekit_hf(name: str) -> dict:
    import tempfile
    import warnings

    import torch

    import prunekit as pk

    warnings.simplefilter("ignore")
    model, args, kwargs = build_hf(name)
    macs0 = _hf_macs(model, args, kwargs)
    graph = pk.trace(model, args, kwargs)
    t0 = time.perf_counter()
    result = pk.prune(model, args, ratio=0.5, example_kwargs=kwargs)
    total = time.perf_counter() - t0
    out = prune_fields(graph, result, total, macs0, _hf_macs(result.model, args, kwargs))
    with torch.no_grad():
        logits = model(*args, **kwargs).logits
    # the config must describe the pruned model: rebuilt from it, the saved weights fit exactly
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        again = type(model).from_pretrained(tmp).eval()
        with torch.no_grad():
            rebuilt = again(*args, **kwargs).logits
            err = float((rebuilt - logits).abs().max() / logits.abs().max())
            out["config_round_trip"] = err <= 1e-4  # the verification tolerance
    if hasattr(model, "generate") and name in ("gpt2", "llama-gqa"):
        gen = model.generate(args[0], max_new_tokens=4, do_sample=False, pad_token_id=0)
        out["generate"] = list(gen.shape) == [1, args[0].shape[1] + 4]
    out["shape_ok"] = out["config_round_trip"] and out.get("generate", True)
    return out


def _hf_macs(model, args, kwargs) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops() / 2


def suite_models(suite: str) -> list[str]:
    if suite == "torchvision":
        import torchvision

        return torchvision.models.list_models(module=torchvision.models)
    if suite == "segmentation":
        import torchvision

        return torchvision.models.list_models(module=torchvision.models.segmentation)
    if suite == "detection":
        return ["fasterrcnn_mobilenet_v3_large_fpn"]
    if suite == "timm":
        return TIMM_MODELS
    if suite == "hf":
        return HF_MODELS
    raise ValueError(f"unknown suite {suite}")


def build(suite: str, name: str):
    """(model, example input, module to prune, end-to-end check) for one case."""
    import torch

    torch.manual_seed(0)
    if suite in ("torchvision", "segmentation"):
        import torchvision

        # no downloads: random init for the backbone too
        kwargs = {"aux_loss": False, "weights_backbone": None} if suite == "segmentation" else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
        size = 299 if "inception" in name else 224
        return model, torch.randn(1, 3, size, size), model
    if suite == "detection":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()
        # the full detector's graph does not export (data-dependent control flow): prune the
        # backbone inside it, then run the whole detector end to end
        return model, torch.randn(1, 3, 320, 320), model.backbone
    if suite == "timm":
        import timm

        model = timm.create_model(name, pretrained=False).eval()
        cfg = model.pretrained_cfg.get("input_size", (3, 224, 224))
        return model, torch.randn(1, *cfg), model
    raise ValueError(suite)


def macs_of(model, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x) if not isinstance(x, list) else model(x)
    return counter.get_total_flops() / 2


def output_shape(model, x):
    import torch
    from torch.utils import _pytree as pytree

    with torch.no_grad():
        out = model(x)
    return [list(t.shape) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def prune_fields(graph, result, total: float, macs0: float, macs1: float) -> dict:
    """The row every prunekit case records."""
    rep = result.report
    return {
        "groups": len(graph.groups),
        "blocked_ops": len(graph.blocked_ops),
        "blocked_op_names": sorted({b.op for b in graph.blocked_ops}),
        "macs_before": macs0,
        "macs_after": macs1,
        "trace_s": rep["trace_seconds"],
        "prune_s": rep["trace_seconds"] + rep["plan_seconds"] + rep["apply_seconds"],
        "verify_s": rep.get("verify_seconds", 0.0),
        "total_s": total,
        "verified": bool(result.verified),
        "max_error": result.max_error,
        "fallback": rep.get("fallback"),
    }


def prepare(suite: str, name: str):
    """Build a case and measure it before pruning: (model, x, target, end-to-end input, MACs,
    output shapes)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    model, x, target = build(suite, name)
    e2e_input = [x[0]] if suite == "detection" else x
    macs0 = macs_of(model, e2e_input)
    shape0 = output_shape(model, e2e_input) if suite != "detection" else None
    return model, x, target, e2e_input, macs0, shape0


def still_works(suite: str, model, e2e_input, shape0) -> bool:
    """The pruned model still does its job: same output shapes (a detector still detects)."""
    import torch

    if suite == "detection":
        with torch.no_grad():
            det = model(e2e_input)
        return isinstance(det, list) and "boxes" in det[0]
    return output_shape(model, e2e_input) == shape0


def run_prunekit(suite: str, name: str) -> dict:
    import warnings

    import prunekit as pk

    warnings.simplefilter("ignore")
    model, x, target, e2e_input, macs0, shape0 = prepare(suite, name)
    graph = pk.trace(target, x)
    t0 = time.perf_counter()
    result = pk.prune(target, x, ratio=0.5, verify=True)
    total = time.perf_counter() - t0
    pruned = result.model
    if suite == "detection":
        model.backbone = pruned
        pruned = model
    out = prune_fields(graph, result, total, macs0, macs_of(pruned, e2e_input))
    out["shape_ok"] = still_works(suite, pruned, e2e_input, shape0)
    return out


def run_torch_pruning(suite: str, name: str) -> dict:
    import warnings

    import torch_pruning as tp
    from torch import nn

    warnings.simplefilter("ignore")
    model, x, target, e2e_input, macs0, shape0 = prepare(suite, name)
    ignored = [m for m in target.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    num_heads = {}
    for m in target.modules():
        if isinstance(m, nn.MultiheadAttention):
            num_heads[m] = m.num_heads
        elif hasattr(m, "qkv") and hasattr(m, "num_heads") and isinstance(m.qkv, nn.Linear):
            num_heads[m.qkv] = m.num_heads
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        target,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=ignored,
        num_heads=num_heads,
    )
    built = time.perf_counter()
    pruner.step()
    done = time.perf_counter()
    out = {"graph_s": built - t0, "prune_s": done - t0, "macs_before": macs0}
    out["macs_after"] = macs_of(model, e2e_input)
    out["shape_ok"] = still_works(suite, model, e2e_input, shape0)
    out["verified"] = None  # Torch-Pruning checks nothing beyond running
    return out


def one(args) -> None:
    try:
        if args.suite == "hf":
            if args.tool != "prunekit":
                raise ValueError("Torch-Pruning needs hand-written head counts for these models")
            result = {"status": "ok", **run_prunekit_hf(args.only)}
        else:
            fn = run_prunekit if args.tool == "prunekit" else run_torch_pruning
            result = {"status": "ok", **fn(args.suite, args.only)}
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        result = {"status": "error", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print("RESULT " + json.dumps(result))


def sweep(args) -> None:
    out_file = Path(args.results)
    results = json.loads(out_file.read_text()) if out_file.exists() else {}
    suites = (
        ["torchvision", "segmentation", "detection", "timm", "hf"]
        if args.suite == "all"
        else [args.suite]
    )
    tools = args.tools.split(",")
    for suite in suites:
        names = [args.only] if args.only else suite_models(suite)
        for name in names:
            for tool in tools:
                if tool == "torch-pruning" and (not _has("torch_pruning") or suite == "hf"):
                    continue
                key = f"{suite}/{name}/{tool}"
                if args.resume and results.get(key, {}).get("status") == "ok":
                    continue
                start = time.perf_counter()
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    "--suite",
                    suite,
                    "--only",
                    name,
                    "--tools",
                    tool,
                    "--tool",
                    tool,
                ]
                try:
                    proc = subprocess.run(
                        cmd,
                        capture_output=True,
                        text=True,
                        timeout=args.timeout if tool == "torch-pruning" else args.timeout * 3,
                    )
                    line = next(
                        (ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None
                    )
                    if line:
                        res = json.loads(line[7:])
                    else:
                        res = {"status": "crash", "error": (proc.stderr or "")[-300:]}
                except subprocess.TimeoutExpired:
                    res = {"status": "timeout", "error": f"over {args.timeout} s"}
                res["wall_s"] = time.perf_counter() - start
                results[key] = res
                print(
                    f"{key}: {res['status']} {res.get('verified', '')} "
                    f"{_ratio(res)} {res['wall_s']:.1f}s {res.get('error', '')}",
                    flush=True,
                )
                out_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = out_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
                tmp.replace(out_file)
    print(table(results))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _ratio(res: dict) -> str:
    if res.get("macs_before") and res.get("macs_after"):
        return f"macs x{res['macs_after'] / res['macs_before']:.2f}"
    return ""


def table(results: dict) -> str:
    rows = [
        "| suite | model | prunekit: groups / blocked ops / MACs kept / verified (max err) / prune s / verify s | Torch-Pruning: shape kept / MACs kept / s |",
        "|---|---|---|---|",
    ]
    keys = sorted({k.rsplit("/", 1)[0] for k in results})
    summary = {}
    for key in keys:
        suite, model = key.split("/", 1)
        pk_res = results.get(f"{key}/prunekit", {})
        tp_res = results.get(f"{key}/torch-pruning")
        ok = pk_res.get("status") == "ok" and pk_res.get("verified") and pk_res.get("shape_ok")
        summary.setdefault(suite, [0, 0, 0, 0, 0])
        summary[suite][0] += bool(ok)
        summary[suite][1] += bool(ok and not pk_res.get("fallback"))
        summary[suite][2] += 1
        if pk_res.get("status") == "ok":
            err = pk_res.get("max_error")
            fb = " (graph)" if pk_res.get("fallback") else ""
            cell = (
                f"{pk_res['groups']} / {pk_res['blocked_ops']} / {_kept(pk_res)} / "
                f"{'yes' if ok else 'NO'}{fb} ({err:.1e}) / {pk_res['prune_s']:.1f} / {pk_res['verify_s']:.1f}"
            )
        else:
            cell = f"{pk_res.get('status', '-')}: {pk_res.get('error', '')[:80]}"
        if tp_res is None:
            tcell = "-"
        elif tp_res.get("status") == "ok":
            tcell = f"{'yes' if tp_res['shape_ok'] else 'NO'} / {_kept(tp_res)} / {tp_res['prune_s']:.1f}"
            summary[suite][3] += bool(tp_res["shape_ok"])
            summary[suite][4] += 1
        else:
            tcell = f"{tp_res.get('status')}: {tp_res.get('error', '')[:60]}"
            summary[suite][4] += 1
        rows.append(f"| {suite} | {model} | {cell} | {tcell} |")
    head = [
        "| suite | prunekit verified | of which the user's eager model | Torch-Pruning shape kept |",
        "|---|---|---|---|",
    ]
    for suite, (ok, eager, n, tok, tn) in summary.items():
        tp = f"{tok}/{tn}" if tn else "not run"
        head.append(f"| {suite} | {ok}/{n} | {eager}/{n} | {tp} |")
    return "\n".join(head + [""] + rows)


def update_readme(results: dict, readme: Path) -> None:
    """Replace the block between the coverage-table markers of the README with the summary."""
    text = readme.read_text()
    start, end = "<!-- coverage-table -->", "<!-- /coverage-table -->"
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no {start} ... {end} block")
    summary = table(results).split("\n\n")[0]
    failures = [
        f"- {k.rsplit('/', 1)[0]}: {v.get('status')} {v.get('error', '')[:120]}"
        for k, v in sorted(results.items())
        if k.endswith("/prunekit") and not (v.get("status") == "ok" and v.get("verified"))
    ]
    block = "\n".join([start, summary, "", *(failures or ["Every case verified."]), end])
    head, rest = text.split(start, 1)
    readme.write_text(head + block + rest.split(end, 1)[1])


def _kept(res: dict) -> str:
    return f"{res['macs_after'] / res['macs_before']:.2f}" if res.get("macs_before") else "-"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite",
        default="torchvision",
        choices=["torchvision", "segmentation", "detection", "timm", "hf", "all"],
    )
    parser.add_argument("--tools", default="prunekit,torch-pruning")
    parser.add_argument("--only", default=None, help="one model name")
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds per Torch-Pruning case (x3 for prunekit)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip cases that already succeeded in the results file",
    )
    parser.add_argument("--table", action="store_true", help="print the table of the results file")
    parser.add_argument("--readme", action="store_true", help="write the summary into README.md")
    parser.add_argument("--results", default=str(RESULTS), help="results file (merged by key)")
    parser.add_argument(
        "--merge", nargs="*", default=[], help="results files merged into --results"
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", default="prunekit", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.merge:
        merged = json.loads(Path(args.results).read_text()) if Path(args.results).exists() else {}
        for extra in args.merge:
            merged.update(json.loads(Path(extra).read_text()))
        Path(args.results).write_text(json.dumps(merged, indent=1, sort_keys=True))
    elif args.readme:
        update_readme(json.loads(RESULTS.read_text()), Path(__file__).parent.parent / "README.md")
    elif args.table:
        print(table(json.loads(RESULTS.read_text())))
    elif args.one:
        one(args)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
