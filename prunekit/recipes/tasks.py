"""Single-step jobs behind the CLI that need more than one library call (prune + measure + save).

>>> from prunekit.recipes.tasks import prune_to_dir
>>> summary = prune_to_dir("torchvision:resnet18", out="runs/r18",
...                        input_shape=(1, 3, 224, 224), ratio=0.5)   # doctest: +SKIP
>>> summary["after"]["macs"] / summary["before"]["macs"]              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from prunekit._copy import deep_copy
from prunekit.recipes._plans import check_reload, compose_plans
from prunekit.recipes._resolve import (
    eval_mode,
    example_inputs,
    require_input_shape,
    resolve_model,
    token_vocab,
)
from prunekit.recipes._rundir import check_output_dir
from prunekit.recipes.runner import _profile_deployed, _profile_dict
from prunekit.train._eval import default_forward

TEXT = "text"  # the --data name of a text corpus, read as token ids (language models)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
TEXT_BATCH = (8, 128)  # calibration batches of token windows: sequences x tokens (at most)


def _batches(data: str | None, data_root: str | None, count: int, seed: int, split: str):
    """The first `count` batches of the `split` ("train" or "test") of data set `data`."""
    if not data:
        return None
    if data == TEXT:
        raise ValueError("--data text is calibration data for weight pruning (--sparsity)")
    from prunekit.data import loaders

    train, test = loaders(data, root=data_root, seed=seed)
    return list(itertools.islice(train if split == "train" else test, count))


def prune_to_dir(
    model: str | Path,
    *,
    out: str | Path,
    input_shape: tuple[int, ...] | None = None,
    ratio: float | None = None,
    target: dict[str, float] | None = None,
    sparsity: float | None = None,
    pattern: str = "unstructured",
    importance: str | None = None,
    scope: str | None = None,
    ignore: list[str] | None = None,
    overrides: dict[str, float] | None = None,
    round_to: int | None = None,
    data: str | None = None,
    data_root: str | None = None,
    calibration_batches: int = 4,
    eval_batches: int = 8,
    verify: bool = True,
    latency: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Prune MODEL (a spec or a saved directory), save it with its plan to `out`, return a summary.

    Structured with `ratio` or `target` (importance default l2, scope local; an `accuracy_drop`
    target measures accuracy on `eval_batches` of the test split of `data`); unstructured with
    `sparsity` and/or an N:M or block `pattern` (`prunekit.sparsify`: importance default
    magnitude, scope global, local for wanda; the zeros are kept by masks saved with the
    model). The summary holds the profile before and after (`before`, `after`: costs of the
    model as deployed, masks removed; size of the file saved to `out`, masks included),
    `verified`, `max_error` and the engine's `report`. `out` is checked before any work and written atomically: on any failure
    nothing is left there.
    """
    import torch

    import prunekit

    weights = sparsity is not None or pattern != "unstructured"
    if sum([ratio is not None, target is not None, weights]) != 1:
        raise ValueError(
            "give exactly one of ratio (e.g. --ratio 0.5), a target (e.g. --target-macs 0.5) or "
            "a sparsity / pattern (e.g. --sparsity 0.9, --pattern 2:4)"
        )
    importance = importance or ("magnitude" if weights else "l2")
    layerwise = weights and (importance == "sparsegpt" or data == TEXT)
    if layerwise and scope is not None:
        raise ValueError(
            "layer-by-layer pruning (sparsegpt, or --data text) prunes each layer on its own: "
            "drop --scope"
        )
    if weights and (overrides or round_to):
        flag = "--override sets channel ratios" if overrides else "--round-to rounds channel counts"
        raise ValueError(
            f"{flag} of structured pruning (--ratio or a --target-*); weight sparsity has no "
            "channel counts (it takes --ignore)"
        )
    scope = "layer by layer" if layerwise else scope or _default_scope(weights, importance)
    out = check_output_dir(out, overwrite=overwrite)
    torch.manual_seed(seed)
    resolved = resolve_model(model)
    shape = require_input_shape(tuple(input_shape) if input_shape else None, resolved)
    if data == TEXT:
        calibration = _text_batches(resolved, data_root, calibration_batches, seed)
    else:
        calibration = _batches(data, data_root, calibration_batches, seed, "train")
    evaluation = None
    if target is not None and "accuracy_drop" in target:
        if not data:
            raise ValueError(
                "a target accuracy drop measures accuracy: give the data set (e.g. --data "
                "fashion-mnist); its test split is the evaluation data"
            )
        evaluation = _batches(data, data_root, eval_batches, seed, "test")
    example = example_inputs(resolved.model, shape, seed=seed)
    net = eval_mode(resolved.model)
    if calibration and data != TEXT:
        _check_fits(net, calibration[0], data)

    original = deep_copy(net) if latency else None  # pruning works in place

    timings: dict[str, float] = {}
    start = time.perf_counter()
    before = _profile_dict(prunekit.profile(net, example, latency=False))
    timings["profile_before"] = time.perf_counter() - start

    start = time.perf_counter()
    with _spinner(progress and not layerwise, "pruning (tracing, planning, verifying)..."):
        if layerwise:  # its own progress bar
            result = _layerwise(net, sparsity, importance, pattern, calibration, ignore, progress)
        elif weights:
            result = _sparsified(net, sparsity, importance, scope, pattern, calibration, ignore)
        else:
            result = prunekit.structured.prune(
                net,
                example,
                ratio=ratio,
                target=target,
                importance=importance,
                scope=scope,
                data=calibration,
                ignore=ignore or None,
                overrides=overrides or None,
                round_to=round_to,
                verify=verify,
                eval_data=evaluation,
            )
    timings["prune"] = time.perf_counter() - start
    pruned = eval_mode(result.model)

    start = time.perf_counter()
    after, deployed = _profile_deployed(pruned, example)  # zeros stay, training-only hooks go
    speedup = None
    if original is not None:
        from prunekit.metrics import compare_latency

        lat = compare_latency(original, deployed, example)  # interleaved, same process
        before.update(latency_ms=lat["a_ms"], threads=lat["threads"])
        after.update(latency_ms=lat["b_ms"], threads=lat["threads"])
        speedup = lat["speedup"]
    timings["profile_after"] = time.perf_counter() - start

    summary: dict[str, Any] = {
        "model": resolved.label,
        "input_shape": list(shape),
        "importance": importance,
        "ratio": ratio,
        "target": target,
        **({"sparsity": result.report["sparsity"], "pattern": pattern} if weights else {}),
        "scope": scope,
        "verified": result.verified,
        "max_error": result.max_error,
        "speedup": speedup,
        "before": before,
        "after": after,
        "report": result.report,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "out": str(out),
    }
    start = time.perf_counter()
    _save_atomic(
        pruned,
        out,
        spec=resolved.spec,
        plan=compose_plans(resolved.plan, result.plan),  # a pruned save pruned again: both rounds
        metadata={"prune": {k: v for k, v in summary.items() if k not in ("out",)}},
        example_inputs=example,
    )
    summary["timings"]["save"] = round(time.perf_counter() - start, 3)
    return summary


def _text_batches(resolved, data_root: str | None, count: int, seed: int) -> list:
    """The first `count` batches of token windows of a text corpus (`data_root`: a directory of
    .txt files; default: the Debian `fortunes` prose), tokenized for the model."""
    from prunekit.data import text_loaders

    config = getattr(resolved.model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    batch, seq_len = TEXT_BATCH
    seq_len = min(seq_len, positions) if isinstance(positions, int) else seq_len
    tokenizer = _tokenizer_of(resolved)
    train, _ = text_loaders(
        data_root, seq_len=seq_len, batch_size=batch, seed=seed, tokenizer=tokenizer
    )
    return list(itertools.islice(train, count))


def _tokenizer_of(resolved) -> Any:
    """The Hugging Face tokenizer saved next to the model, else None (UTF-8 byte ids)."""
    import warnings

    spec = resolved.spec or ""
    path = Path(spec[3:]) if spec.startswith("hf:") else None
    if path is not None and path.is_dir() and any((path / f).is_file() for f in TOKENIZER_FILES):
        import transformers

        return transformers.AutoTokenizer.from_pretrained(str(path))
    vocab = token_vocab(resolved.model)
    if vocab is None:
        raise ValueError(
            "--data text gives token ids, but the model does not read token ids (its input is "
            "not an embedding)"
        )
    if vocab < 257:
        raise ValueError(
            f"no tokenizer saved with the model, and its vocabulary ({vocab} tokens) is too small "
            "for byte ids (257): save the tokenizer into the model directory"
        )
    if vocab != 257:
        warnings.warn(
            f"no tokenizer saved with the model: calibrating on UTF-8 byte ids (0-256) of its "
            f"{vocab}-token vocabulary; save the tokenizer into the model directory "
            "(tokenizer.save_pretrained(DIR)) for text it reads as it was trained",
            stacklevel=2,
        )
    return None


def _spinner(enabled: bool, text: str) -> Any:
    """A rich spinner on stderr while a silent step runs (only on a terminal)."""
    if enabled:
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            return console.status(text, spinner="dots")
    return contextlib.nullcontext()


def _default_scope(weights: bool, importance: str) -> str:
    """Channels: local. Weights: as `prunekit.sparsify` picks for the criterion (wanda: local)."""
    if not weights:
        return "local"
    from prunekit.unstructured._sparsify import default_scope

    try:
        return default_scope(importance)
    except (ValueError, KeyError):  # an unknown criterion is reported with the other checks
        return "global"


def _layerwise(model, sparsity, importance, pattern, calibration, ignore, progress) -> Any:
    """`prunekit.unstructured.prune_layerwise` (block by block, each layer on its own) in place,
    shaped like a structured PruneResult."""
    from prunekit.unstructured import prune_layerwise

    if calibration is None and importance != "magnitude":
        raise ValueError(
            f"{importance} prunes from calibration data: give --data text (the Debian fortunes "
            "corpus, or --data-root DIR of .txt files)"
        )
    report = prune_layerwise(
        model, calibration, sparsity, importance, pattern, ignore=ignore or None, progress=progress
    )
    return _weights_result(model, report)


def _sparsified(model, sparsity, importance, scope, pattern, calibration, ignore) -> Any:
    """`prunekit.sparsify` in place, shaped like a structured PruneResult."""
    import prunekit

    report = prunekit.sparsify(
        model,
        sparsity,
        importance=importance,
        scope=scope,
        pattern=pattern,
        data=calibration,
        ignore=ignore or None,
    )
    return _weights_result(model, report)


def _weights_result(model, report) -> Any:
    """A weight-pruning `SparsityReport` shaped like a structured PruneResult (no plan, nothing to
    verify: the architecture is unchanged)."""
    import types

    summary = {"sparsity": report.sparsity, "layers": report.to_dict()}
    return types.SimpleNamespace(
        model=model, plan=None, verified=None, max_error=None, report=summary
    )


def _save_atomic(model, out: Path, **kwargs: Any) -> None:
    """prunekit.save into a sibling temporary directory, then move it into place."""
    import prunekit

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = tmp / "model"
        prunekit.save(model, target, **kwargs)
        check_reload(target, model, kwargs["example_inputs"])  # prove the save before it counts
        if out.exists():
            if any(out.iterdir()):
                old = tmp / "old"
                os.rename(
                    out, old
                )  # --overwrite: the old contents go only once the new are complete
            else:
                out.rmdir()
        os.rename(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sensitivity_to_dir(
    model: str | Path,
    *,
    data: str,
    out: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    data_root: str | None = None,
    batches: int = 4,
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75),
    importance: str = "l2",
    metric: str = "accuracy",
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """`prunekit.sensitivity` of MODEL on the first `batches` test batches of data set `data`;
    with `out`, writes `sensitivity.json` and `sensitivity.png` there (atomically)."""
    import prunekit

    out_dir = check_output_dir(out, overwrite=overwrite) if out is not None else None
    net, example, _, test = _model_and_data(model, input_shape, data, data_root, seed)
    result = prunekit.sensitivity(
        net,
        example,
        test,
        metric,
        ratios=ratios,
        importance=importance,
        batches=batches,
        progress=progress,
    )
    if out_dir is not None:
        _write_outputs(
            out_dir, {"sensitivity.json": result.to_json()}, {"sensitivity.png": result.plot}
        )
    return result


def compare_to_dir(
    model: str | Path,
    *,
    data: str,
    criteria: tuple[str, ...],
    scopes: tuple[str, ...],
    budgets: tuple[float, ...],
    out: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    data_root: str | None = None,
    batches: int = 4,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """`prunekit.compare` of MODEL: calibration on the first `batches` training batches of `data`,
    accuracy on its first `batches` test batches; with `out`, writes `compare.json` and
    `compare.png` there (atomically)."""
    import prunekit

    out_dir = check_output_dir(out, overwrite=overwrite) if out is not None else None
    net, example, train, test = _model_and_data(model, input_shape, data, data_root, seed)
    result = prunekit.compare(
        net,
        example,
        [b for _, b in zip(range(batches), train)],
        eval_data=[b for _, b in zip(range(batches), test)],
        criteria=criteria,
        scopes=scopes,
        budgets=budgets,
        progress=progress,
    )
    if out_dir is not None:
        _write_outputs(out_dir, {"compare.json": result.to_json()}, {"compare.png": result.plot})
    return result


def _model_and_data(
    model: str | Path,
    input_shape: tuple[int, ...] | None,
    data: str,
    data_root: str | None,
    seed: int,
) -> tuple[Any, tuple, Any, Any]:
    """MODEL resolved (eval mode), its example inputs, and the (train, test) batches of `data`."""
    import torch

    from prunekit.data import loaders

    torch.manual_seed(seed)
    resolved = resolve_model(model)
    shape = require_input_shape(tuple(input_shape) if input_shape else None, resolved)
    train, test = loaders(data, root=data_root, seed=seed)
    net = eval_mode(resolved.model)
    _check_fits(net, next(iter(test)), data)
    return net, example_inputs(net, shape, seed=seed), train, test


def _check_fits(model: Any, batch: Any, data: str) -> None:
    """ValueError (a usage error) when the data set's inputs do not fit the model."""
    import torch

    inputs = batch[0] if isinstance(batch, tuple | list) else batch
    sample = inputs[:2] if isinstance(inputs, torch.Tensor) else inputs
    try:
        with torch.no_grad():
            default_forward(model, sample)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        shape = tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else "?"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"the {data} data does not fit the model: its inputs are {shape} per sample "
            f"({first}); give data of the model's input shape"
        ) from None


def _write_outputs(out: Path, texts: dict[str, str], plots: dict[str, Any]) -> None:
    """Write text files and plots (`plot(path)` callables) into `out` atomically."""
    from prunekit.io._atomic import make_temp_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.")  # may become `out`: mkdir's permissions
    try:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name, plot in plots.items():
            plot(tmp / name)
        if out.exists():  # checked before the work: empty, or --overwrite of a prunekit output
            for item in tmp.iterdir():
                os.replace(item, out / item.name)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
