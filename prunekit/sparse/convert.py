"""`convert`: swap linear and convolution layers for sparse kernels where a measurement says so.

>>> import torch, prunekit as pk
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> with torch.no_grad():
...     model[0].weight[torch.rand(32, 64) < 0.9] = 0
>>> report = pk.sparse.convert(model.eval(), torch.randn(8, 64))
>>> print(report.summary())  # doctest: +SKIP

The contract with `prunekit.unstructured` is "dense weights with zeros": only the zeros of each
weight matter here (``*_mask`` buffers are carried over untouched, never read; a sparsify mask
stays listed by `masks_of` on the converted layer and is hooked again by `densify`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit._copy import deep_copy
from prunekit.sparse import _native
from prunekit.sparse._timing import Timer, interleaved_median
from prunekit.sparse.layers import KERNELS, SparseConv2d, SparseLinear, _csr_runs

__all__ = ["convert", "densify", "ConvertReport", "LayerChoice"]

DENSE = "dense"
TOLERANCE = 1e-5  # max|y_sparse - y_dense| / max|y_dense| (DESIGN §4.1 error measure)


@dataclass
class LayerChoice:
    """What `convert` decided for one layer, and the measurements behind the decision."""

    name: str
    type: str  # "Linear" | "Conv2d"
    weight_shape: list[int]
    input_shape: list[int] | None
    density: float  # nonzeros / elements of the weight
    kernel: str  # "dense" (kept) or the sparse kernel chosen
    dense_ms: float | None = None
    sparse_ms: float | None = None  # the fastest sparse candidate, chosen or not
    timings_ms: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def speedup(self) -> float | None:
        if self.dense_ms is None or not self.sparse_ms:
            return None
        return self.dense_ms / self.sparse_ms


@dataclass
class ConvertReport:
    """Per-layer choices of `convert`; `model` is the (converted in place) model."""

    layers: list[LayerChoice]
    threads: int
    native: str  # status of the native kernels
    min_speedup: float
    model: nn.Module | None = field(default=None, repr=False)
    model_dense_ms: float | None = None  # the whole model, before and after (when measured)
    model_sparse_ms: float | None = None

    @property
    def converted(self) -> list[str]:
        """Names of the layers now running a sparse kernel."""
        return [c.name for c in self.layers if c.kernel != DENSE]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "native": self.native,
            "min_speedup": self.min_speedup,
            "model_dense_ms": self.model_dense_ms,
            "model_sparse_ms": self.model_sparse_ms,
            "layers": [{**asdict(c), "speedup": c.speedup} for c in self.layers],
        }

    def summary(self) -> str:
        """A plain-text table: layer, shape, density, kernel, dense/sparse ms, reason."""

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        rows = [("layer", "weight", "input", "density", "kernel", "dense ms", "sparse ms", "why")]
        for c in self.layers:
            rows.append(
                (
                    c.name,
                    "x".join(map(str, c.weight_shape)),
                    "-" if c.input_shape is None else "x".join(map(str, c.input_shape)),
                    f"{c.density:.3f}",
                    c.kernel,
                    ms(c.dense_ms),
                    ms(c.sparse_ms),
                    c.reason,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in rows]
        head = f"sparse.convert: {len(self.converted)}/{len(self.layers)} layers converted, "
        head += f"{self.threads} thread(s), {self.native}"
        if self.model_dense_ms is not None and self.model_sparse_ms is not None:
            head += (
                f"\nwhole model: dense {self.model_dense_ms:.4f} ms, converted "
                f"{self.model_sparse_ms:.4f} ms ({self.model_dense_ms / self.model_sparse_ms:.2f}x)"
            )
        return "\n".join([head, *lines])


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _capture_inputs(
    model: nn.Module,
    modules: dict[str, nn.Module],
    example_inputs: tuple[Any, ...],
    example_kwargs: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """The input of each module's first call on the example inputs (forward pre-hooks)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # no side effects (BatchNorm statistics, dropout RNG) on the user's model
        with torch.no_grad():
            model(*example_inputs, **example_kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return seen


def _error(y: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    diff = (y.float() - ref.float()).abs().max().item()
    return diff / scale if scale > 0 else diff


def _unsupported(module: nn.Module) -> str | None:
    weight = module.weight
    if not isinstance(weight, torch.Tensor) or weight.device.type != "cpu":
        return "not on CPU (the sparse kernels are CPU kernels)"
    if not weight.is_floating_point():
        return f"dtype {weight.dtype} is not a float"
    if weight.dtype != torch.float32 and not _csr_runs(weight.dtype, weight.device):
        return (
            f"dtype {str(weight.dtype).removeprefix('torch.')}: no sparse kernel runs it on CPU "
            "(native: float32; torch CSR: float32 / float64)"
        )
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.unsupported(module)
    return None


def _build(module: nn.Module, kernel: str) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_dense(module, kernel)
    return SparseLinear.from_dense(module, kernel)  # type: ignore[arg-type]


def _decide(
    name: str,
    module: nn.Module,
    x: torch.Tensor | None,
    kernels: Sequence[str],
    measure: bool,
    timer: Timer,
    min_speedup: float,
    max_density: float,
) -> tuple[LayerChoice, nn.Module | None]:
    weight = module.weight.detach()
    density = float(torch.count_nonzero(weight).item()) / max(1, weight.numel())
    choice = LayerChoice(
        name=name,
        type=type(module).__name__,
        weight_shape=list(weight.shape),
        input_shape=None if x is None else list(x.shape),
        density=density,
        kernel=DENSE,
    )
    if x is None:
        choice.reason = "not called on the example inputs"
        return choice, None
    if (why := _unsupported(module)) is not None:
        choice.reason = why
        return choice, None
    if density > max_density:
        choice.reason = f"density {density:.3f} > max_density {max_density}"
        return choice, None

    with torch.no_grad():
        reference = module(x)
    candidates: dict[str, nn.Module] = {}
    notes = []
    for kernel in kernels:
        try:
            sparse = _build(module, kernel).eval()
            with torch.no_grad():
                err = _error(sparse(x), reference)
        except ValueError as e:
            notes.append(f"{kernel}: {e}")
            continue
        except (RuntimeError, NotImplementedError) as e:  # a kernel torch lacks: kept dense
            notes.append(f"{kernel}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        if err > TOLERANCE:
            notes.append(f"{kernel}: output error {err:.2e} > {TOLERANCE:g}")
            continue
        candidates[kernel] = sparse
    if not candidates:
        choice.reason = "no sparse kernel applies: " + "; ".join(notes)
        return choice, None
    if not measure:
        kernel = next(iter(candidates))
        choice.kernel, choice.reason = kernel, "measure=False: first applicable kernel"
        return choice, candidates[kernel]

    def runner(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return m(x)

        return run

    runs = {DENSE: runner(module), **{k: runner(m) for k, m in candidates.items()}}
    timings = {k: float(v) for k, v in timer(name, runs).items()}
    choice.timings_ms = timings
    choice.dense_ms = timings[DENSE]
    best = min(candidates, key=lambda k: timings[k])
    choice.sparse_ms = timings[best]
    speedup = choice.dense_ms / max(choice.sparse_ms, 1e-12)
    if speedup >= min_speedup:
        choice.kernel = best
        choice.reason = f"{best} measured {speedup:.2f}x faster"
        return choice, candidates[best]
    choice.reason = f"kept dense: best sparse ({best}) measured {speedup:.2f}x < {min_speedup:g}x"
    return choice, None


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put `new` wherever `old` is a child (a module shared under several names moves once)."""
    for _, parent in model.named_modules(remove_duplicate=False):
        for attr, child in list(parent._modules.items()):
            if child is old:
                parent._modules[attr] = new


def convert(
    model: nn.Module,
    example_inputs: Any,
    *,
    example_kwargs: dict[str, Any] | None = None,
    kernels: Iterable[str] | None = None,
    layers: Sequence[str] = ("*",),
    ignore: Sequence[str] = (),
    measure: bool = True,
    timer: Timer | None = None,
    min_speedup: float = 1.1,
    max_density: float = 0.7,
    check_model: bool = True,
) -> ConvertReport:
    """Replace `nn.Linear` / `nn.Conv2d` layers of `model` (in place) by sparse-kernel layers
    (`SparseLinear`, `SparseConv2d`) **only where they measured faster** on this machine.

    Each candidate layer's input is captured by running `model(*example_inputs,
    **example_kwargs)`; then, with the thread count as currently set, the dense layer and every
    sparse kernel in `kernels` (default: ``"native"`` when it compiled, and ``"torch_csr"``) are
    timed on that input, interleaved (`timer`, default median of interleaved rounds), and the
    fastest sparse kernel replaces the layer when ``dense_ms / sparse_ms >= min_speedup``. A sparse
    kernel must first reproduce the dense output within 1e-5 (relative to max |y|).

    With `check_model` (and `measure`), the whole converted model is then timed against the dense
    one on the example inputs, and every swap is undone if it is slower end to end (a layer can win
    alone and lose in context); the report records both times.

    `layers` / `ignore`: globs of module names to consider / skip. Layers denser than
    `max_density` are kept dense without timing. ``measure=False`` skips timing and converts
    every eligible layer with the first applicable kernel (tests, or a forced choice). Only modules
    whose type is exactly nn.Linear or nn.Conv2d (groups=1, zero padding) are considered; on any
    error the model is left unchanged. Converted layers are for inference (see
    `prunekit.sparse.layers`); their state_dict keeps the dense weights.

    Returns a `ConvertReport` (per layer: shapes, density, kernel, dense_ms, sparse_ms, reason).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if example_kwargs is not None and not isinstance(example_kwargs, dict):
        raise TypeError(f"example_kwargs must be a dict, got {type(example_kwargs).__name__}")
    if isinstance(layers, str) or isinstance(ignore, str):
        raise TypeError("layers and ignore take a list of name globs, e.g. ignore=['fc3']")
    if not (isinstance(min_speedup, (int, float)) and min_speedup > 0):
        raise ValueError(f"min_speedup must be a positive number, got {min_speedup!r}")
    if kernels is None:
        kernels = [k for k in KERNELS if k != "native" or _native.library() is not None]
    kernels = list(kernels)
    if unknown := [k for k in kernels if k not in KERNELS]:
        raise ValueError(f"unknown sparse kernel(s) {unknown}; choose from {list(KERNELS)}")
    timer = timer or interleaved_median

    targets = {
        name: m
        for name, m in model.named_modules()
        if type(m) in (nn.Linear, nn.Conv2d)
        and name
        and _matches(name, layers)
        and not _matches(name, ignore)
    }
    inputs = _capture_inputs(model, targets, _as_tuple(example_inputs), example_kwargs or {})
    choices, swaps = [], []
    for name, module in targets.items():
        choice, new = _decide(
            name, module, inputs.get(name), kernels, measure, timer, min_speedup, max_density
        )
        choices.append(choice)
        if new is not None:
            swaps.append((module, new))
    report = ConvertReport(
        layers=choices,
        threads=torch.get_num_threads(),
        native=_native.status(),
        min_speedup=float(min_speedup),
        model=model,
    )
    reference = deep_copy(model) if measure and check_model and swaps else None
    for old, new in swaps:  # only now touch the model: every decision succeeded
        _replace(model, old, new)
    if reference is not None:
        _check_whole_model(
            report, model, reference, swaps, timer, example_inputs, example_kwargs or {}
        )
    return report


def _check_whole_model(
    report: ConvertReport,
    model: nn.Module,
    reference: nn.Module,
    swaps: list[tuple[nn.Module, nn.Module]],
    timer: Timer,
    example_inputs: Any,
    example_kwargs: dict[str, Any],
) -> None:
    """Time the converted model against the dense one; undo every swap if it is slower."""
    args = _as_tuple(example_inputs)

    def runner(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return m(*args, **example_kwargs)

        return run

    modes = {m: m.training for m in model.modules()}
    model.eval(), reference.eval()
    try:
        timings = timer("<model>", {DENSE: runner(reference), "converted": runner(model)})
    finally:
        for m, training in modes.items():
            m.training = training
    report.model_dense_ms, report.model_sparse_ms = timings[DENSE], timings["converted"]
    if report.model_sparse_ms <= report.model_dense_ms:
        return
    speedup = report.model_dense_ms / report.model_sparse_ms
    for old, new in swaps:
        _replace(model, new, old)
    for choice in report.layers:
        if choice.kernel != DENSE:
            choice.kernel = DENSE
            choice.reason = f"reverted: the converted model measured {speedup:.2f}x end to end"


def densify(model: nn.Module) -> nn.Module:
    """Turn every `SparseLinear` / `SparseConv2d` of `model` back into nn.Linear / nn.Conv2d (in
    place, on the layer's current device and dtype; persistent buffers such as ``weight_mask``
    kept, and the masks of `prunekit.sparsify` hooked again, so `masks_of` lists what it listed
    before `convert` and fine-tuning keeps pruned weights at zero). Returns `model`."""
    if isinstance(model, (SparseLinear, SparseConv2d)):
        raise ValueError(
            "densify works on a model containing sparse layers, not on one alone; "
            "use layer.to_dense()"
        )
    for _, module in list(model.named_modules()):
        if isinstance(module, (SparseLinear, SparseConv2d)):
            _replace(model, module, module.to_dense())
    return model
