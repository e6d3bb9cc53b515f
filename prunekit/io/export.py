"""`export`: deployable artefacts (ONNX, TorchScript, torch.export), verified in their runtime.

>>> import torch, tempfile, prunekit as pk
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
>>> out = pk.export(model, tempfile.mkdtemp() + "/m.onnx", example_inputs=torch.randn(2, 8))
>>> out.verified, out.max_rel_error <= 1e-4
(True, True)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from prunekit._copy import deep_copy
from prunekit.io import _export_inputs as xi
from prunekit.io import _export_latency, _format, _onnx, _program, _torchscript
from prunekit.io._atomic import UnwritableLocationError, make_temp_dir

__all__ = [
    "export",
    "export_latency",
    "check_path",
    "ExportResult",
    "ExportVerificationError",
    "FORMATS",
]

# format -> (implementation, default file name, runtime that runs it)
_IMPLEMENTATIONS: dict[str, tuple[ModuleType, str, str]] = {
    "onnx": (_onnx, "model.onnx", "onnxruntime"),
    "torchscript": (_torchscript, "model.pt", "torch.jit"),
    "exported-program": (_program, "model.pt2", "torch.export"),
}
FORMATS = tuple(_IMPLEMENTATIONS)
_EXPORTER_LABELS = {
    ("onnx", "dynamo"): "torch.onnx (dynamo)",
    ("onnx", "torchscript"): "torch.onnx (torchscript)",
    ("torchscript", "script"): "torch.jit.script",
    ("torchscript", "trace"): "torch.jit.trace",
    ("exported-program", "torch.export"): "torch.export",
}
# where a run directory (prunekit run) keeps its unpruned model
_DENSE_STAGE = Path("stages") / "dense"


class ExportVerificationError(RuntimeError):
    """The artefact does not compute what the PyTorch model computes (nothing was written)."""

    def __init__(self, message: str, max_abs_error: float, max_rel_error: float) -> None:
        super().__init__(message)
        self.max_abs_error = max_abs_error
        self.max_rel_error = max_rel_error


@dataclass
class ExportResult:
    """What `export` wrote and what it measured.

    Errors are max|Δ| and max|Δ| / max|y_ref| over every output, against the PyTorch model, at
    each batch size in `batch_sizes`. `latency` (when measured) holds medians in ms of the
    artefact and of the unpruned model's export in the same runtime (`speedup` = baseline/ours).
    """

    path: Path
    format: str
    exporter: str
    runtime: str
    verified: bool
    max_abs_error: float | None
    max_rel_error: float | None
    batch_sizes: list[int]
    dynamic_batch: bool
    size_bytes: int
    attempts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    latency: dict[str, Any] | None = None
    frozen: bool = False
    accuracy: float | None = None
    quantized_path: Path | None = None
    quantized_size_bytes: int | None = None
    quantized_max_rel_error: float | None = None
    quantized_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("path", "quantized_path"):
            if data[key] is not None:
                data[key] = str(data[key])
        return data


@dataclass
class _Source:
    model: nn.Module
    args: tuple
    kwargs: dict
    directory: Path | None = None
    document: dict[str, Any] | None = None


# --- inputs ------------------------------------------------------------------------------------


def _eval(model: nn.Module) -> nn.Module:
    with contextlib.suppress(NotImplementedError):  # the exported-graph fallback cannot switch
        model.eval()
    return model


def _from_directory(path: Path, example_inputs: Any, kwargs: dict, build: Any) -> _Source:
    from prunekit.io.saveload import _directory, load, read_metadata

    directory = _directory(path)
    document = read_metadata(directory)
    model = load(directory, build=build)
    if example_inputs is None:
        specs = _format.recorded_input_specs(document)  # its own, else its plan's
        if not specs:
            raise ValueError(
                f"{directory} records no example inputs; pass example_inputs= "
                "(CLI: --input-shape, e.g. --input-shape 1,3,224,224)"
            )
        args = xi.from_specs(specs)
    else:
        args = xi.as_args(example_inputs)
    return _Source(model, args, kwargs, directory, document)


def _source(
    model_or_dir: Any, example_inputs: Any, example_kwargs: dict | None, build: Any = None
) -> _Source:
    if example_kwargs is not None and not isinstance(example_kwargs, dict):
        raise TypeError(f"example_kwargs must be a dict, got {type(example_kwargs).__name__}")
    kwargs = dict(example_kwargs or {})
    if isinstance(model_or_dir, (str, os.PathLike)):
        return _from_directory(Path(model_or_dir), example_inputs, kwargs, build)
    if isinstance(model_or_dir, torch.export.ExportedProgram):
        if example_inputs is None and model_or_dir.example_inputs:
            example_inputs, recorded = model_or_dir.example_inputs
            kwargs = {**recorded, **kwargs}
        model_or_dir = model_or_dir.module()
    if not isinstance(model_or_dir, nn.Module):
        raise TypeError(
            "export expects an nn.Module, a torch.export.ExportedProgram or the path of a "
            f"prunekit save / run directory, got {type(model_or_dir).__name__}"
        )
    if example_inputs is None:
        raise ValueError(
            "pass example_inputs=, e.g. example_inputs=torch.randn(1, 3, 224, 224): the export "
            "is traced and verified with them"
        )
    return _Source(model_or_dir, xi.as_args(example_inputs), kwargs)


def _save_file(target: Path) -> bool:
    """Whether `target` is the description or the data file of the prunekit save it is in."""
    if not _format.is_save(target.parent):
        return False
    document = _format.read(target.parent)
    return target.name in {_format.META_FILE, _format.KINDS[document["kind"]]}


def check_path(path: str | os.PathLike[str], fmt: str) -> None:
    """ValueError unless `path` is an existing directory (the file goes in it under the default
    name) or ends in the extension of `fmt` (.onnx, .pt, .pt2): the runtimes, and the latency
    measurement, tell a file's format from it. Checked before any work."""
    if fmt not in _IMPLEMENTATIONS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    target = Path(path)
    if target.is_dir():
        return
    if _save_file(target):
        raise ValueError(f"{target} is a file of the prunekit save it is in; choose another path")
    suffix = Path(_IMPLEMENTATIONS[fmt][1]).suffix
    if target.suffix != suffix:
        other = [
            f for f, (_, name, _) in _IMPLEMENTATIONS.items() if Path(name).suffix == target.suffix
        ]
        hint = f", or choose format {other[0]!r}" if other else ""
        raise ValueError(
            f"{target} does not end in {suffix}, the extension of {fmt} files; name it "
            f"{target.with_suffix(suffix).name}{hint}"
        )


def _target(path: Any, source: _Source, fmt: str) -> Path:
    default_name = _IMPLEMENTATIONS[fmt][1]
    if path is None:
        if source.directory is None:
            raise ValueError(f"pass the output path, e.g. export(model, '{default_name}', ...)")
        target = source.directory / default_name
    else:
        target = Path(path)
        if target.is_dir():
            target = target / default_name
    target = Path(os.path.abspath(target))
    if _save_file(target):
        if path is not None:
            raise ValueError(
                f"{target} is a file of the prunekit save it is in; choose another path"
            )
        target = target.with_name(f"model.exported{target.suffix}")  # save holds model.pt2
    if target.exists() and not target.is_file():
        raise ValueError(f"{target} exists and is not a file; choose another path")
    return target


# --- writing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary directory beside `target`; its files are moved next to `target` on success.

    Verification runs on the staged files, so a failed check leaves nothing behind and an
    earlier artefact at `target` stays as it was.
    """
    created = []
    parent = target.parent
    try:
        while not parent.exists():
            created.append(parent)
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"cannot write {target}: {parent} is not a directory")
        for directory in reversed(created):
            directory.mkdir()
        tmp = make_temp_dir(target.parent, f".{target.name}.tmp-")
    except PermissionError as e:
        _remove_dirs(created)
        raise UnwritableLocationError(
            f"cannot write {target}: {e.strerror or e}; choose a writable location"
        ) from e
    try:
        yield tmp
        # data files first, the model file (which names them) last
        for item in sorted(tmp.iterdir(), key=lambda p: p.suffix in (".onnx", ".pt", ".pt2")):
            os.replace(item, target.parent / item.name)
    except BaseException:
        _remove_dirs(created)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_dirs(created: list[Path]) -> None:
    for directory in created:  # deepest first
        shutil.rmtree(directory, ignore_errors=True)


def _clear(directory: Path) -> None:
    for item in directory.iterdir():
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _exporters(fmt: str, exporter: str) -> tuple[str, ...]:
    options = _IMPLEMENTATIONS[fmt][0].EXPORTERS
    if exporter == "auto":
        return options
    if exporter not in options:
        raise ValueError(
            f"exporter {exporter!r} does not write {fmt}; choose 'auto' or one of {options}"
        )
    return (exporter,)


# --- checking ----------------------------------------------------------------------------------


@dataclass
class _Check:
    max_abs: float = 0.0
    max_rel: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    dynamic: bool = True
    failure: str | None = None


def _reference(model: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        return xi.tensors_of(model(*args, **kwargs))


def _check(
    impl: ModuleType, file: Path, model: nn.Module, args: tuple, kwargs: dict, dynamic: bool
) -> _Check:
    """Run the artefact at the example batch and (when its batch is dynamic) at another one."""
    check = _Check(dynamic=dynamic)
    try:
        run = impl.load(file)
    except Exception as e:  # noqa: BLE001 - reported as this exporter's failure
        check.failure = f"the runtime could not load it ({_first_line(e)})"
        return check
    batch = xi.batch_size(args, kwargs)
    cases = [(args, kwargs, batch)]
    if batch is not None and dynamic:
        other = xi.other_batch(batch)
        cases.append((*xi.at_batch(args, kwargs, other), other))
    for index, (a, k, b) in enumerate(cases):
        try:
            want = _reference(model, a, k)
        except Exception:  # noqa: BLE001 - the model itself takes the example batch only
            check.dynamic = False
            continue
        try:
            got = run(a, k)
        except Exception as e:  # noqa: BLE001
            if index == 0:
                check.failure = f"it does not run ({_first_line(e)})"
                return check
            check.dynamic = False  # runs at the example batch only
            continue
        abs_err, rel_err = xi.errors(want, got)
        check.max_abs = max(check.max_abs, abs_err)
        check.max_rel = max(check.max_rel, rel_err)
        if b is not None:
            check.batch_sizes.append(b)
    return check


def _accuracy(run: Any, data: Iterable[Any]) -> float:
    """Top-1 accuracy of the first output over `data` batches of (inputs, targets)."""
    correct = total = 0
    for batch in data:
        inputs, targets = batch
        logits = run(xi.as_args(inputs), {})[0]
        correct += int((logits.argmax(-1) == targets.reshape(logits.shape[:-1])).sum())
        total += int(targets.numel())
    if total == 0:
        raise ValueError("data yielded no examples; pass an iterable of (inputs, targets)")
    return correct / total


def _check_data(model: nn.Module, data: list[Any]) -> None:
    """ValueError (bad input, found before any export work) unless the first batch of `data`
    runs through the PyTorch model as the accuracy measurement will run it through the file."""
    if not data:
        raise ValueError("data yielded no batches; pass an iterable of (inputs, targets)")
    batch = data[0]
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise ValueError(f"data must yield (inputs, targets) batches, got a {type(batch).__name__}")
    inputs = batch[0]
    try:
        _accuracy(lambda args, kwargs: _reference(model, args, kwargs), [batch])
    except Exception as e:  # noqa: BLE001 - any failure here is data that does not fit
        shape = tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else "?"
        raise ValueError(
            f"the data does not fit the model: its inputs are {shape} per sample "
            f"({_first_line(e)}); give data of the model's input shape"
        ) from None


def _alignment_note(model: nn.Module) -> str | None:
    """A hint when convolutions have channel counts that CPU kernels handle slowly.

    ONNX Runtime's CPU convolutions (MLAS, NCHWc layout) work in blocks of 8 or 16 channels;
    measured on resnet18 at 4x fewer MACs, 31/62/124/247 channels ran 25-35% slower than
    32/64/120/240 (benchmarks/export_speed.py).
    """
    convs = [
        (name, m.out_channels)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels >= 16
    ]
    odd = [(name, c) for name, c in convs if c % 8]
    if not odd:
        return None
    name, channels = odd[0]
    return (
        f"{len(odd)} of {len(convs)} convolutions have channel counts that are not multiples of "
        f"8 (e.g. {name}: {channels}); CPU runtimes compute channels in blocks of 8, so pruning "
        "with round_to=8 is usually faster at the same MACs"
    )


def _size(file: Path) -> int:
    """Bytes on disk of a model file and its external data files."""
    extra = sum(p.stat().st_size for p in file.parent.glob(f"{file.name}.data"))
    return file.stat().st_size + extra


def _write_first_verified(
    fmt: str,
    exporters: tuple[str, ...],
    file: Path,
    model: nn.Module,
    args: tuple,
    kwargs: dict,
    *,
    verify: bool,
    rtol: float,
    options: dict[str, Any],
) -> tuple[str, _Check, list[str]]:
    """Try each exporter in turn until one writes a file that passes the check.

    Returns (exporter label, its check, why earlier exporters were skipped). Raises
    ExportVerificationError (with the closest error) when files were written but none matched,
    RuntimeError when no exporter could write one.
    """
    impl = _IMPLEMENTATIONS[fmt][0]
    attempts: list[str] = []
    closest: _Check | None = None
    for name in exporters:
        label = _EXPORTER_LABELS[(fmt, name)]
        try:
            dynamic = impl.write(model, args, kwargs, file, name, **options)
        except Exception as e:  # noqa: BLE001 - try the next exporter, report all
            attempts.append(f"{label}: export failed ({_first_line(e)})")
            _clear(file.parent)
            continue
        if not verify:
            return label, _Check(dynamic=dynamic), attempts
        check = _check(impl, file, model, args, kwargs, dynamic)
        if check.failure is None and check.max_rel <= rtol:
            return label, check, attempts
        attempts.append(f"{label}: {check.failure or f'relative error {check.max_rel:.3g}'}")
        if check.failure is None and (closest is None or check.max_rel < closest.max_rel):
            closest = check
        _clear(file.parent)
    summary = "; ".join(attempts)
    if closest is not None:
        raise ExportVerificationError(
            f"the {fmt} export does not match the PyTorch model (max abs error "
            f"{closest.max_abs:.3g}, relative {closest.max_rel:.3g} > {rtol:g}); nothing was "
            f"written. Attempts: {summary}",
            closest.max_abs,
            closest.max_rel,
        )
    raise RuntimeError(f"could not export the model as {fmt}: {summary}")


# --- the entry point ---------------------------------------------------------------------------
DEFAULT_RTOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _default_rtol(model: nn.Module) -> float:
    """1e-4, or what the model's lowest floating precision can promise."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return max([DEFAULT_RTOL.get(d, 1e-4) for d in dtypes] or [1e-4])


def export(
    model_or_dir: nn.Module | torch.export.ExportedProgram | str | os.PathLike[str],
    path: str | os.PathLike[str] | None = None,
    *,
    format: str = "onnx",
    example_inputs: Any = None,
    example_kwargs: dict[str, Any] | None = None,
    verify: bool = True,
    rtol: float | None = None,
    exporter: str = "auto",
    freeze: bool = False,
    quantize: str | None = None,
    data: Iterable[Any] | None = None,
    latency: bool = False,
    baseline: nn.Module | str | os.PathLike[str] | None = None,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 10,
    build: Callable[[], nn.Module] | None = None,
) -> ExportResult:
    """Write `model_or_dir` as `format` ("onnx", "torchscript", "exported-program"), run the
    artefact in its runtime (ONNX Runtime, torch.jit.load, torch.export.load) and compare it with
    the PyTorch model at the example batch and another batch size.

    - `model_or_dir`: a model (with `example_inputs`), an ExportedProgram, or a prunekit save /
      run directory, whose recorded example inputs are used when none are given (`build` as in
      `prunekit.load`). `path` defaults to `<dir>/model.onnx` / `model.pt` / `model.pt2` there.
    - `exporter`: "auto" tries, in order, "dynamo" then "torchscript" (ONNX), "script" then
      "trace" (TorchScript); the result names the one used and why others were skipped.
    - `freeze=True` (TorchScript only): write the module frozen for inference (`torch.jit.freeze`:
      weights inlined, BatchNorm folded into the convolutions). Load it with
      `torch.jit.optimize_for_inference(torch.jit.load(path))`, as prunekit's own checks and
      timings do (its oneDNN-packed form cannot be saved). A frozen file cannot be trained.
    - Verification: error max|Δ| / max|y_ref| must be <= `rtol` (default 1e-4; 1e-2 for a
      float16 and 5e-2 for a bfloat16 model, whose own rounding is that coarse); otherwise
      `ExportVerificationError` is raised with the measured error and nothing is written.
    - `quantize="int8"` (ONNX only): dynamic int8 quantisation with ONNX Runtime, written beside
      as `<name>.int8.onnx`; with `data` (batches of (inputs, targets)) the top-1 accuracy of
      both files is measured.
    - `latency=True`: one-thread (`threads`) latency in the runtime, interleaved with the export
      of `baseline` (the unpruned model; for a run directory its dense stage, for a pruned save
      its architecture rebuilt without the plan) when available; see `export_latency`.

    The file is written atomically (staged, verified, then renamed into place).

    >>> import torch, tempfile, prunekit as pk
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    >>> pk.export(net, tempfile.mkdtemp() + "/n.pt", format="torchscript",
    ...           example_inputs=torch.randn(1, 3, 8, 8)).exporter
    'torch.jit.script'
    """
    if format not in _IMPLEMENTATIONS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    exporters = _exporters(format, exporter)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and format != "onnx":
        raise ValueError("quantize='int8' applies to ONNX exports only; pass format='onnx'")
    if freeze and format != "torchscript":
        raise ValueError(
            "freeze=True applies to TorchScript exports only; pass format='torchscript'"
        )
    if rtol is not None and not (isinstance(rtol, (int, float)) and rtol > 0):
        raise ValueError(f"rtol must be a positive number, got {rtol!r}")
    if path is not None:
        check_path(path, format)
    source = _source(model_or_dir, example_inputs, example_kwargs, build)
    rtol = rtol if rtol is not None else _default_rtol(source.model)
    target = _target(path, source, format)
    impl, _, runtime = _IMPLEMENTATIONS[format]
    model = _eval(deep_copy(source.model))  # the user's model keeps its mode and weights
    args, kwargs = source.args, source.kwargs
    try:
        _reference(model, args, kwargs)
    except Exception as e:  # noqa: BLE001 - bad example inputs are the user's to fix
        raise ValueError(
            f"the model does not run on the example inputs ({_first_line(e)}); check "
            "example_inputs (CLI: --input-shape)"
        ) from e
    if data is not None:
        data = list(data)
        _check_data(model, data)

    with _staging(target) as tmp:
        file = tmp / target.name
        label, check, attempts = _write_first_verified(
            format,
            exporters,
            file,
            model,
            args,
            kwargs,
            verify=verify,
            rtol=rtol,
            options={"freeze": True} if freeze else {},
        )
        result = ExportResult(
            path=target,
            format=format,
            exporter=label,
            runtime=runtime,
            verified=verify,
            max_abs_error=check.max_abs if verify else None,
            max_rel_error=check.max_rel if verify else None,
            batch_sizes=check.batch_sizes,
            dynamic_batch=check.dynamic,
            size_bytes=_size(file),
            attempts=attempts,
            frozen=freeze,
        )
        if format == "onnx" and (note := _alignment_note(model)):
            result.notes.append(note)
        if quantize:
            _quantize(result, file, model, args, kwargs)
        if data is not None:
            result.accuracy = _accuracy(impl.load(file), data)
            if result.quantized_path is not None:
                quantized_file = tmp / result.quantized_path.name
                result.quantized_accuracy = _accuracy(_onnx.load(quantized_file), data)
    if latency:
        result.latency = _latency_with_baseline(
            result, source, baseline, exporter, threads=threads, runs=runs, warmup=warmup
        )
    return result


def _quantize(result: ExportResult, file: Path, model: nn.Module, args: tuple, kwargs: dict):
    quantized = file.with_name(f"{file.stem}.int8.onnx")
    try:
        _onnx.quantize_int8(file, quantized)
        got = _onnx.load(quantized)(args, kwargs)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"int8 quantisation with ONNX Runtime failed: {_first_line(e)}") from e
    result.quantized_path = result.path.with_name(quantized.name)
    result.quantized_size_bytes = _size(quantized)
    result.quantized_max_rel_error = xi.errors(_reference(model, args, kwargs), got)[1]


# --- latency -----------------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    suffixes = {".onnx": "onnx", ".pt": "torchscript", ".pt2": "exported-program"}
    if path.suffix not in suffixes:
        raise ValueError(
            f"cannot tell the format of {path} from its extension; expected .onnx, .pt or .pt2"
        )
    return suffixes[path.suffix]


def export_latency(
    path: str | os.PathLike[str],
    example_inputs: Any,
    *,
    baseline: str | os.PathLike[str] | None = None,
    example_kwargs: dict[str, Any] | None = None,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 10,
) -> dict[str, Any]:
    """Latency of an exported file in its runtime, interleaved with `baseline` (another export of
    the same format, e.g. the unpruned model) when given.

    ONNX runs in ONNX Runtime with `intra_op_num_threads=threads`, one inter-op thread and
    sequential execution; TorchScript and exported programs run with `torch.set_num_threads`
    pinned to `threads`. Returns medians: `{"ms", "p10_ms", "p90_ms", "baseline_ms", "speedup",
    "batch_size", "threads", "runs", "warmup", "runtime", "allocator"}` (`speedup` = baseline_ms
    / ms; `allocator` as in `prunekit.metrics.measure_latency`).
    """
    from prunekit.metrics.allocator import use_allocator
    from prunekit.metrics.latency import pinned_threads

    file = Path(path)
    fmt = _format_of(file)
    impl, _, runtime = _IMPLEMENTATIONS[fmt]
    args, kwargs = xi.as_args(example_inputs), dict(example_kwargs or {})
    files = [file] if baseline is None else [file, Path(baseline)]
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f} does not exist; export the model first")
    if baseline is not None and _format_of(files[1]) != fmt:
        raise ValueError(f"baseline {files[1]} is not a {fmt} file like {file}")
    held = use_allocator(None)  # ONNX Runtime has its own arena; TorchScript uses glibc's
    with pinned_threads(threads):
        runners = [impl.load(f, threads) for f in files]
        stats = _export_latency.time_runners(runners, args, kwargs, runs=runs, warmup=warmup)
    return _export_latency.summary(
        stats,
        batch_size=xi.batch_size(args, kwargs),
        threads=threads,
        runs=runs,
        warmup=warmup,
        runtime=runtime,
        allocator=held,
    )


def _baseline_model(source: _Source, baseline: Any) -> nn.Module | None:
    """The unpruned model to compare with: given, a run's dense stage, or the spec rebuilt."""
    if baseline is not None:
        if isinstance(baseline, nn.Module):
            return baseline
        from prunekit.io.saveload import load

        return load(baseline)
    if source.directory is None:
        return None
    dense = source.directory / _DENSE_STAGE
    if _format.is_save(dense):
        from prunekit.io.saveload import load

        return load(dense)
    document = source.document or {}
    if document.get("plan") and document.get("spec"):
        # weights do not change the latency of a dense model: a fresh build of the architecture
        from prunekit.io.saveload import saved_spec
        from prunekit.models import build_model

        spec = saved_spec(document, source.directory)
        return build_model(spec, **dict(document.get("spec_kwargs") or {}))
    return None


def _latency_with_baseline(
    result: ExportResult, source: _Source, baseline: Any, exporter: str, **timing: Any
) -> dict[str, Any]:
    reference = _baseline_model(source, baseline)
    if reference is None:
        out = export_latency(result.path, source.args, example_kwargs=source.kwargs, **timing)
        out["baseline"] = None
        return out
    with tempfile.TemporaryDirectory(prefix="prunekit-baseline-") as tmp:
        base = export(
            reference,
            Path(tmp) / result.path.name,
            format=result.format,
            example_inputs=source.args,
            example_kwargs=source.kwargs,
            exporter=exporter,
            freeze=result.frozen,
        )
        out = export_latency(
            result.path,
            source.args,
            baseline=base.path,
            example_kwargs=source.kwargs,
            **timing,
        )
    out["baseline"] = "given" if baseline is not None else "unpruned"
    return out
