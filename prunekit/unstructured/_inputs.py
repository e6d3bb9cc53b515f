"""What each targeted weight multiplies, over calibration batches: Σ x² per input feature.

Wanda scores a weight by |W| times the norm of the input feature it multiplies. A Linear's or
conv's input is its first argument. nn.MultiheadAttention's input projections read three inputs
(in_proj_weight's q, k and v rows multiply the query, key and value). Its `out_proj` is an
nn.Linear that MultiheadAttention never calls (it hands the weight to
`F.multi_head_attention_forward`): what it multiplies is read by running the attention once more
with an identity in its place.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.unstructured._targets import Target


def _conv_input_sumsq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Σ x² of every im2col row (c, k...) of a conv input: ``[C_in, *kernel_size]``."""
    k, s, d = module.kernel_size, module.stride, module.dilation
    if x.dim() == len(k) + 1:
        x = x.unsqueeze(0)  # unbatched input
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x.detach().float(), module._reversed_padding_repeated_twice, mode=mode)
    sq = x * x  # [N, C, *spatial]
    out = [(sq.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(len(k))]
    table = sq.new_zeros(sq.shape[1], *k)
    dims = [0, *range(2, sq.dim())]
    for offsets in itertools.product(*(range(ki) for ki in k)):
        window = tuple(
            slice(o * d[i], o * d[i] + s[i] * (out[i] - 1) + 1, s[i]) for i, o in enumerate(offsets)
        )
        table[(slice(None), *offsets)] = sq[(slice(None), slice(None), *window)].sum(dims)
    return table


def _input_sumsq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return _row_sumsq(x)  # [in]
    return _conv_input_sumsq(module, x)


# which of nn.MultiheadAttention's inputs (query, key, value) each projection reads
_MHA_INPUTS = {
    "in_proj_weight": (0, 1, 2),
    "q_proj_weight": (0,),
    "k_proj_weight": (1,),
    "v_proj_weight": (2,),
}


def _target_sumsq(target: Target, args: tuple, kwargs: dict) -> torch.Tensor:
    """Σ x² per input feature of what the target's weight multiplies: ``[in]`` for a Linear,
    ``[C_in, k...]`` for a conv, ``[inputs, E]`` for a MultiheadAttention projection (its rows
    in blocks, one per input it reads: in_proj_weight's q, k and v rows)."""
    module = target.module
    if not isinstance(module, nn.MultiheadAttention):
        x = args[0] if args else next(iter(kwargs.values()))
        return _row_sumsq(x) if target.transposed else _input_sumsq(module, x)
    names = ("query", "key", "value")
    inputs = [args[i] if i < len(args) else kwargs[names[i]] for i in range(3)]
    return torch.stack([_row_sumsq(inputs[i]) for i in _MHA_INPUTS[target.attr]])


def _row_sumsq(x: torch.Tensor) -> torch.Tensor:
    return (x.detach().float() ** 2).reshape(-1, x.shape[-1]).sum(0)


def feature_norms_like(target: Target, sumsq: torch.Tensor) -> torch.Tensor:
    """||X|| broadcast to the weight's shape (grouped convs pick their group's channels,
    MultiheadAttention's stacked projections each the input it reads)."""
    module, weight = target.module, target.weight
    norms = sumsq.sqrt()
    if isinstance(module, nn.MultiheadAttention):  # [inputs, E] -> a block of rows per input
        return norms.repeat_interleave(weight.shape[0] // norms.shape[0], dim=0)
    if target.transposed:  # [in, out]: the inputs along the rows
        return norms.reshape(-1, 1).expand_as(weight)
    if isinstance(module, nn.Linear):
        return norms.reshape(1, -1).expand_as(weight)
    groups = module.groups
    per_group = norms.reshape(groups, weight.shape[1], *norms.shape[1:])  # [G, C/G, k...]
    owner = torch.arange(weight.shape[0], device=norms.device) // (weight.shape[0] // groups)
    return per_group[owner]


class InputRecorder:
    """Context manager accumulating `sums[target.name]` (see `_target_sumsq`) for `targets`
    while the model runs."""

    def __init__(self, model: nn.Module, targets: list[Target]) -> None:
        self.targets = targets
        self.sums: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._out_projections = _out_projections(model, targets)
        self._fastpath = True

    def add(self, name: str, ss: torch.Tensor) -> None:
        self.sums[name] = self.sums[name] + ss if name in self.sums else ss

    def _input_hook(self, target: Target):
        def hook(module: nn.Module, args: Any, kwargs: dict) -> None:
            self.add(target.name, _target_sumsq(target, args, kwargs))

        return hook

    def _context_hook(self, target: Target):
        def hook(module: nn.Module, args: Any, kwargs: dict, output: Any) -> None:
            self.add(target.name, _row_sumsq(_attention_context(module, args, kwargs)))

        return hook

    def __enter__(self) -> InputRecorder:
        owners = {id(t.weight): m for m, t in self._out_projections}
        self._handles = [
            t.module.register_forward_pre_hook(self._input_hook(t), with_kwargs=True)
            for t in self.targets
            if id(t.weight) not in owners
        ]
        self._handles += [
            m.register_forward_hook(self._context_hook(t), with_kwargs=True)
            for m, t in self._out_projections
        ]
        # the fused fast paths of nn.TransformerEncoderLayer / MultiheadAttention run the
        # attention without calling these modules: the hooks would miss them
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        torch.backends.mha.set_fastpath_enabled(self._fastpath)


def _out_projections(model: nn.Module, targets: list[Target]) -> list[tuple[nn.Module, Target]]:
    """(the nn.MultiheadAttention, the target) of every target that is an `out_proj`."""
    by_weight = {id(t.weight): t for t in targets if t.attr == "weight"}
    return [
        (m, by_weight[id(m.out_proj.weight)])
        for m in model.modules()
        if isinstance(m, nn.MultiheadAttention) and id(m.out_proj.weight) in by_weight
    ]


def _attention_context(module: nn.MultiheadAttention, args: Any, kwargs: dict) -> torch.Tensor:
    """What `out_proj` multiplied in this call: the attention run again (no hooks) with an
    identity output projection."""
    original = module.out_proj
    embed = original.weight.shape[1]
    weight = original.weight
    identity = nn.Linear(embed, embed, device=weight.device, dtype=weight.dtype)
    identity.weight.data = torch.eye(embed, dtype=weight.dtype, device=weight.device)
    identity.bias.data.zero_()  # the fast path wants a bias tensor
    module.out_proj = identity
    try:
        return module.forward(*args, **kwargs)[0]
    finally:
        module.out_proj = original
