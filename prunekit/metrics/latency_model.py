"""A latency model of this machine for one model: per-layer lookup tables over channel counts.

Measured once, it predicts the latency of any channel-pruned version of the model without
running it, so latency budgets can be planned (and explained) without timing every candidate:

- each `nn.Linear`, ungrouped and depthwise `nn.Conv2d` is timed alone, at its own input size,
  on a grid of input x output channel counts (depthwise: one count), the grid's sizes timed in
  turn, round after round, so that a slow phase of the machine (a shared machine's speed drifts
  by 10-25% over seconds) slows all of them alike instead of skewing a few;
- a channel count off the grid is timed the first time a prediction needs it (and remembered),
  since CPU kernels are not smooth in the channel count (vector widths): in turn with the nearest
  grid size, and scaled by that size's table entry, so that it is as fast as the grid was when
  it was fitted; `exact=False` interpolates bilinearly instead (extrapolating linearly below
  the smallest grid point);
- what the layers do not explain (norms, activations, pooling, adds, Python overhead: the
  measured whole-model latency minus the layers' sum) is kept as a remainder that scales with the
  layers' output activations.

>>> import torch, prunekit as pk
>>> lm = pk.metrics.LatencyModel.fit(model, torch.randn(64, 3, 32, 32))  # doctest: +SKIP
>>> lm.predict(pruned_model)  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.metrics.allocator import use_allocator
from prunekit.metrics.latency import measure_latency, pinned_threads, time_interleaved

__all__ = ["LatencyModel", "LayerTable"]

GRID = (0.25, 0.5, 0.75, 1.0)
Timer = Callable[[nn.Module, torch.Tensor], float]  # milliseconds of module(x)
Job = tuple[nn.Module, torch.Tensor]
EntryTimer = Callable[[list[Job]], list[float]]  # milliseconds of each module(x)


@dataclass
class LayerTable:
    """Measured milliseconds of one layer on a grid of (input, output) channel counts."""

    kind: str  # "linear", "conv2d" or "depthwise"
    in_size: int
    out_size: int
    out_positions: int  # output elements per output channel (batch x spatial)
    ins: list[int]
    outs: list[int]
    ms: list[list[float]]  # [len(ins)][len(outs)]; depthwise: one column
    input_shape: list[int] = field(default_factory=list)  # the layer's input at full size
    spec: dict[str, Any] = field(default_factory=dict)  # what else builds the layer (kernel...)
    exact: dict[str, float] = field(default_factory=dict)  # "in,out" -> ms, timed off the grid

    def predict(self, in_size: int, out_size: int) -> float:
        if self.kind == "depthwise":
            return _interp1(self.ins, [row[0] for row in self.ms], in_size)
        i, a = _bracket(self.ins, in_size)
        j, b = _bracket(self.outs, out_size)
        m = self.ms
        low = m[i][j] + b * (m[i][j + 1] - m[i][j]) if len(self.outs) > 1 else m[i][0]
        if len(self.ins) == 1:
            return max(low, 0.0)
        high = (
            m[i + 1][j] + b * (m[i + 1][j + 1] - m[i + 1][j]) if len(self.outs) > 1 else m[i + 1][0]
        )
        return max(low + a * (high - low), 0.0)


@dataclass
class LatencyModel:
    """Per-layer tables plus the remainder, for one model, input size and thread count."""

    layers: dict[str, LayerTable]
    measured_ms: float  # the unpruned model, end to end
    remainder_ms: float  # measured_ms minus the layers' sum at full size
    activations: float  # the layers' output elements at full size
    batch: int
    threads: int
    fixed_ms: float = 0.0  # the part of the remainder that does not shrink (see `calibrated`)
    meta: dict[str, Any] = field(default_factory=dict)
    exact: bool = True  # time channel counts off the grid when a prediction needs them
    runs: int = 20
    warmup: int = 5
    timer: Timer | None = field(default=None, repr=False, compare=False)  # not saved

    @classmethod
    def fit(
        cls,
        model: nn.Module,
        example_inputs: Any,
        *,
        grid: Sequence[float] = GRID,
        runs: int = 20,
        warmup: int = 5,
        threads: int | None = None,
        exact: bool = True,
        timer: Timer | None = None,
    ) -> LatencyModel:
        """Time every supported layer of `model` alone on the channel grid, and the whole model.

        `example_inputs` fix the batch and spatial sizes the model is timed at. `exact` (default):
        predict channel counts off the grid by timing them (once each), not by interpolating.
        `timer` replaces the clock (tests); by default each layer is timed with
        `measure_latency` (median of `runs`).
        """
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        seen = _layer_inputs(model, inputs)
        threads = threads or torch.get_num_threads()
        entries = _entry_timer(timer, runs, warmup, threads)
        layers = {name: _table(module, x, grid, entries) for name, (module, x) in seen.items()}
        clock = timer or _median_ms(runs, warmup, threads)
        measured = clock(model, inputs if len(inputs) > 1 else inputs[0])
        full = sum(t.predict(t.in_size, t.out_size) for t in layers.values())
        batch = int(inputs[0].shape[0]) if isinstance(inputs[0], torch.Tensor) else 1
        return cls(
            layers=layers,
            measured_ms=measured,
            remainder_ms=max(measured - full, 0.0),
            activations=float(sum(t.out_size * t.out_positions for t in layers.values())),
            batch=batch,
            threads=threads,
            exact=exact,
            runs=runs,
            warmup=warmup,
            timer=timer,
        )

    def predict(self, model: nn.Module) -> float:
        """Predicted milliseconds of `model`: the same architecture with fewer channels."""
        return self.predict_sizes(self.sizes_of(model))

    def predict_sizes(self, sizes: dict[str, tuple[int, int]]) -> float:
        """Predicted milliseconds for (input, output) channel counts per layer, by name: a
        pruning plan can be costed before any model is built."""
        layers, activations = self._layers(sizes)
        return layers + self._remainder(self._share(activations))

    def sizes_of(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        """(input, output) channel counts of `model`'s timed layers."""
        modules = dict(model.named_modules())
        sizes = {}
        for name in self.layers:
            module = modules.get(name)
            if module is None:
                raise ValueError(
                    f"latency model: the model has no layer {name!r}; it predicts only "
                    "channel-pruned versions of the model it was fitted on"
                )
            sizes[name] = _sizes(module)
        return sizes

    def _layers(self, sizes: dict[str, tuple[int, int]]) -> tuple[float, float]:
        """The tables' milliseconds for these channel counts, and the layers' activations."""
        total, activations = 0.0, 0.0
        for name, table in self.layers.items():
            in_size, out_size = sizes[name]
            total += self._layer_ms(table, in_size, out_size)
            activations += out_size * table.out_positions
        return total, activations

    def _layer_ms(self, table: LayerTable, in_size: int, out_size: int) -> float:
        """The table's milliseconds; in `exact` mode a count off the grid is timed once."""
        if table.kind == "depthwise":
            out_size = in_size
        on_grid = in_size in table.ins and (table.kind == "depthwise" or out_size in table.outs)
        if not self.exact or on_grid or not table.input_shape:
            return table.predict(in_size, out_size)
        key = f"{in_size},{out_size}"
        if key not in table.exact:
            entries = _entry_timer(self.timer, self.runs, self.warmup, self.threads)
            near_in, near_out = _nearest(table.ins, in_size), _nearest(table.outs, out_size)
            off, near = entries(
                [_scaled(table, in_size, out_size), _scaled(table, near_in, near_out)]
            )
            table.exact[key] = table.predict(near_in, near_out) * off / near if near > 0 else off
        return table.exact[key]

    def _share(self, activations: float) -> float:
        return activations / self.activations if self.activations else 1.0

    def _remainder(self, share: float) -> float:
        return self.fixed_ms + (self.remainder_ms - self.fixed_ms) * share

    def calibrated(self, model: nn.Module, measured_ms: float) -> LatencyModel:
        """A copy whose remainder is split into a fixed part and a part that scales with the
        activations, so that it predicts `measured_ms` for `model` (a pruned version measured
        at the fitted batch) as well as the unpruned measurement."""
        layers, activations = self._layers(self.sizes_of(model))
        share = self._share(activations)
        if share >= 0.999:  # no information about how the remainder scales
            return self
        scaling = (self.remainder_ms - (measured_ms - layers)) / (1.0 - share)
        scaling = min(max(scaling, 0.0), self.remainder_ms)
        return dataclasses.replace(self, fixed_ms=self.remainder_ms - scaling)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "timer"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        layers = {k: LayerTable(**v) for k, v in data["layers"].items()}
        return cls(**{**data, "layers": layers})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _supported(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple):
        if module.groups == 1:
            return "conv2d"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
    return None


def _sizes(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _layer_inputs(model: nn.Module, inputs: tuple) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Each supported layer with (a copy of) the first input it receives in one forward pass."""
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = (module, args[0].detach().clone())

        return record

    handles = [
        m.register_forward_pre_hook(hook(name))
        for name, m in model.named_modules()
        if _supported(m)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _median_ms(runs: int, warmup: int, threads: int) -> Timer:
    def timer(module: nn.Module, x: torch.Tensor) -> float:
        return measure_latency(module, x, runs=runs, warmup=warmup, threads=threads)["median_ms"]

    return timer


def _entry_timer(timer: Timer | None, runs: int, warmup: int, threads: int) -> EntryTimer:
    """Times a list of (layer, input): with `timer` one by one, else in turn (`time_interleaved`,
    median of `runs` rounds)."""
    if timer is not None:
        return lambda jobs: [timer(module, x) for module, x in jobs]

    def in_turn(jobs: list[Job]) -> list[float]:
        use_allocator(None)
        calls = [functools.partial(module, x) for module, x in jobs]
        with pinned_threads(threads), torch.inference_mode():
            times = time_interleaved(calls, runs, warmup)
        return [statistics.median(t) for t in times]

    return in_turn


def _table(
    module: nn.Module, x: torch.Tensor, grid: Sequence[float], entries: EntryTimer
) -> LayerTable:
    kind = _supported(module)
    in_size, out_size = _sizes(module)
    ins = _grid_sizes(in_size, grid)
    outs = [0] if kind == "depthwise" else _grid_sizes(out_size, grid)
    with torch.no_grad():
        out = module(x)
    positions = out.numel() // out_size
    table = LayerTable(kind, in_size, out_size, positions, ins, outs, [], list(x.shape))
    table.spec = _spec(module)
    inputs = {i: _input_like(table, i) for i in ins}  # one input per input count
    ms = entries([(_layer_like(table, i, o or i), inputs[i]) for i in ins for o in outs])
    table.ms = [ms[k * len(outs) : (k + 1) * len(outs)] for k in range(len(ins))]
    return table


def _grid_sizes(size: int, grid: Sequence[float]) -> list[int]:
    return sorted({max(1, round(size * f)) for f in grid} | {size})


def _spec(module: nn.Module) -> dict[str, Any]:
    spec: dict[str, Any] = {"bias": module.bias is not None}
    if isinstance(module, nn.Conv2d):
        for attr in ("kernel_size", "stride", "padding", "dilation"):
            spec[attr] = list(getattr(module, attr))
    return spec


def _scaled(table: LayerTable, in_size: int, out_size: int) -> Job:
    """A fresh layer like the table's with other channel counts, and an input to match."""
    return _layer_like(table, in_size, out_size), _input_like(table, in_size)


def _layer_like(table: LayerTable, in_size: int, out_size: int) -> nn.Module:
    spec = table.spec
    if table.kind == "linear":
        return nn.Linear(in_size, out_size, bias=spec["bias"]).eval()
    depthwise = table.kind == "depthwise"
    layer = nn.Conv2d(
        in_size,
        in_size if depthwise else out_size,
        tuple(spec["kernel_size"]),
        tuple(spec["stride"]),
        tuple(spec["padding"]),
        tuple(spec["dilation"]),
        in_size if depthwise else 1,
        spec["bias"],
    )
    return layer.eval()


def _input_like(table: LayerTable, in_size: int) -> torch.Tensor:
    shape = table.input_shape
    if table.kind == "linear":
        return torch.randn(*shape[:-1], in_size)
    return torch.randn(shape[0], in_size, *shape[2:])


def _nearest(points: list[int], value: int) -> int:
    return min(points, key=lambda p: (abs(p - value), p))


def _bracket(points: list[int], value: float) -> tuple[int, float]:
    """Index i and fraction a with value = points[i] + a (points[i+1] - points[i]); a may leave
    [0, 1] outside the grid (linear extrapolation)."""
    if len(points) == 1:
        return 0, 0.0
    i = min(max(bisect.bisect_right(points, value) - 1, 0), len(points) - 2)
    return i, (value - points[i]) / (points[i + 1] - points[i])


def _interp1(points: list[int], values: list[float], value: float) -> float:
    i, a = _bracket(points, value)
    if len(points) == 1:
        return values[0]
    return max(values[i] + a * (values[i + 1] - values[i]), 0.0)
