"""`profile`: params, nonzeros, MACs, latency, peak memory, size and energy of one model.

>>> import torch, prunekit as pk
>>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> prof = pk.profile(model, torch.randn(3, 8), latency=False)
>>> prof.macs, prof.params, prof.batch_size
(120, 46, 3)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from prunekit._checks import check_model
from prunekit.metrics._call import (
    ForwardFn,
    as_inputs,
    batch_size_of,
    dense_equivalent,
    device_and_dtype,
    effective_parameters,
    inference,
    make_runner,
)
from prunekit.metrics._counting import count_costs, resident_bytes
from prunekit.metrics.energy import estimate_energy
from prunekit.metrics.environment import environment
from prunekit.metrics.latency import measure_latency
from prunekit.metrics.size import size_fields

__all__ = ["Profile", "profile"]


@dataclass
class Profile:
    """What one inference of a model costs. Counts are for the whole example batch.

    - `params` / `nonzero_params`: parameters (shared ones once) and how many are nonzero.
    - `macs`: dense multiply-accumulates from `torch.utils.flop_counter` (FLOPs / 2: conv,
      linear/matmul, bmm, scaled-dot-product attention; elementwise ops, norms and biases cost 0).
    - `nonzero_macs`: each op's dense MACs x the density of its weight operand (DESIGN §5).
    - `layers`: qualified module name -> `{"type", "macs", "nonzero_macs", "params", "nonzero"}`;
      an op is charged to the innermost module running it, `""` being the root module.
    - `activation_elements`: tensor elements read and written by ops, weights excluded.
    - `latency_*`: median / 10th / 90th percentile ms over `latency_runs` after warm-up, with
      `threads` torch threads; `latency_allocator` `"held"` when freed memory was held in the
      process while timing (see `prunekit.metrics.allocator`).
    - `peak_memory_bytes`: parameters + buffers + inputs + the peak bytes of intermediate tensors
      alive at once, tracked per ATen op (kernel-internal scratch space and allocator caching
      are not included); `peak_activation_bytes` is the intermediate part alone.
    - `size_bytes` / `size_compressed_bytes`: the safetensors file `prunekit.save` writes for
      this model, raw and through `compression` (masks of a sparsified model included).
    - `energy_mj`: an ESTIMATE (`energy_is_estimate`) per DESIGN §5, see `prunekit.metrics.energy`;
      `energy_breakdown_mj` splits it into MACs, weight reads and activation traffic.
    """

    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int
    activation_elements: int
    batch_size: int | None
    device: str
    dtype: str
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_ms: float | None = None
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    latency_runs: int | None = None
    latency_warmup: int | None = None
    latency_allocator: str | None = None
    threads: int | None = None
    peak_memory_bytes: int | None = None
    peak_activation_bytes: int | None = None
    size_bytes: int | None = None
    size_compressed_bytes: int | None = None
    compression: str | None = None
    energy_mj: float = 0.0
    energy_breakdown_mj: dict[str, float] = field(default_factory=dict)
    energy_is_estimate: bool = True
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Fraction of parameters that are zero."""
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every field (plain ints, floats, str, None, dicts)."""
        return asdict(self)

    def summary(self) -> str:
        """A few readable lines, e.g. for logs."""
        lines = [
            f"params {self.params:,} ({self.nonzero_params:,} nonzero, {self.sparsity:.1%} sparse)",
            f"MACs {self.macs:,} ({self.nonzero_macs:,} nonzero), batch {self.batch_size}",
        ]
        if self.latency_ms is not None:
            lines.append(
                f"latency {self.latency_ms:.3f} ms median (p10 {self.latency_p10_ms:.3f}, "
                f"p90 {self.latency_p90_ms:.3f}; {self.latency_runs} runs, {self.threads} threads, "
                f"allocator {self.latency_allocator})"
            )
        if self.peak_memory_bytes is not None:
            lines.append(f"peak memory {self.peak_memory_bytes:,} bytes")
        if self.size_bytes is not None:
            lines.append(
                f"size {self.size_bytes:,} bytes ({self.size_compressed_bytes:,} {self.compression})"
            )
        lines.append(f"energy {self.energy_mj:.4g} mJ (estimate)")
        return "\n".join(lines)


def profile(
    model: nn.Module,
    example_inputs: Any,
    example_kwargs: dict[str, Any] | None = None,
    *,
    latency: bool = True,
    memory: bool = True,
    size: bool = True,
    runs: int = 50,
    warmup: int = 10,
    threads: int | None = None,
    forward_fn: ForwardFn | None = None,
) -> Profile:
    """Measure `model` on `example_inputs` (a tuple, or a lone tensor) in eval mode.

    The model is left as it was: train/eval flags restored, everything under
    `torch.inference_mode` (no gradients, no state updates). `latency`, `memory` and `size` can
    be switched off (their fields are None). `threads` pins torch's thread count for the timing;
    `forward_fn(model, inputs)` replaces the plain call `model(*inputs, **example_kwargs)`.

    >>> import torch, prunekit as pk
    >>> prof = pk.profile(torch.nn.Linear(8, 4), torch.randn(2, 8), latency=False)
    >>> prof.macs, prof.size_bytes > 0
    (64, True)
    """
    check_model(model, "profile")
    inputs = as_inputs(example_inputs)
    kwargs = dict(example_kwargs or {})
    run = make_runner(model, inputs, kwargs, forward_fn)
    device, dtype = device_and_dtype(model, inputs)

    # Layers converted by prunekit.sparse are counted as the dense layers they stand for (their
    # kernels are invisible to the FLOP counter); memory is what the model really holds.
    resident = resident_bytes(model, (inputs, kwargs))
    with dense_equivalent(model) as counted:
        params = nonzero = 0
        for _, values in effective_parameters(counted):  # unique parameters: tied weights once
            params += values.numel()
            nonzero += int(torch.count_nonzero(values))
        with inference(counted):
            counted_run = (
                run if counted is model else make_runner(counted, inputs, kwargs, forward_fn)
            )
            costs = count_costs(counted, counted_run, (inputs, kwargs))
    costs.baseline_bytes = resident
    types = {name: type(m).__name__ for name, m in model.named_modules()}
    for name, layer in costs.layers.items():  # report what runs: SparseLinear, not Linear
        layer.type = types.get(name, layer.type)
    result = Profile(
        params=params,
        nonzero_params=nonzero,
        macs=int(costs.macs),
        nonzero_macs=int(round(costs.nonzero_macs)),
        activation_elements=int(costs.activation_elements),
        batch_size=batch_size_of(inputs, kwargs),
        device=device,
        dtype=dtype,
        layers={name: layer.to_dict() for name, layer in sorted(costs.layers.items())},
        machine=environment(),
    )
    if memory:
        result.peak_activation_bytes = int(costs.peak_live_bytes)
        result.peak_memory_bytes = int(costs.baseline_bytes + costs.peak_live_bytes)
    energy = estimate_energy(costs.nonzero_macs, nonzero, costs.activation_elements)
    result.energy_mj = energy["total_mj"]
    result.energy_breakdown_mj = {
        k.removesuffix("_mj"): v for k, v in energy.items() if k != "total_mj"
    }

    if latency:
        stats = measure_latency(
            model,
            inputs,
            runs=runs,
            warmup=warmup,
            threads=threads,
            kwargs=kwargs,
            forward_fn=forward_fn,
        )
        result.latency_ms = stats["median_ms"]
        result.latency_p10_ms = stats["p10_ms"]
        result.latency_p90_ms = stats["p90_ms"]
        result.latency_runs = stats["runs"]
        result.latency_warmup = stats["warmup"]
        result.latency_allocator = stats["allocator"]
        result.threads = stats["threads"]
    else:
        result.threads = threads if threads is not None else torch.get_num_threads()
    return replace(result, **size_fields(model)) if size else result
