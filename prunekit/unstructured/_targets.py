"""Which weights `sparsify` targets, and the 2-D view that patterns are defined on."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# nn.Linear subclasses (e.g. MultiheadAttention's out_proj) count as Linear.
TARGET_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
EMBEDDINGS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class Target:
    """One targeted weight: ``module.<attr>`` known as ``name`` (e.g. ``"fc1.weight"``)."""

    module_name: str
    module: nn.Module
    attr: str = "weight"
    transposed: bool = False  # stored [in, out] (GPT-2's Conv1D): `oriented` gives [out, in]

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.attr}" if self.module_name else self.attr

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    def oriented(self, tensor: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor as ``[out, in...]`` (a transposed weight's transpose; the
        transpose is its own inverse, so it also maps back)."""
        return tensor.t() if self.transposed else tensor


def linear_layout(module: nn.Module) -> bool | None:
    """False for nn.Linear, True for a transposed GPT-2 ``Conv1D`` (weight ``[in, out]``,
    `x @ W + b`), None otherwise."""
    if isinstance(module, nn.Linear):
        return False
    weight = getattr(module, "weight", None)
    if (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    ):
        return True
    return None


def _is_target(module: nn.Module) -> bool:
    if not isinstance(module, TARGET_TYPES):
        return False
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and not isinstance(
        weight, nn.parameter.UninitializedParameter
    )


def check_ignore(model: nn.Module, ignore: Sequence[str]) -> None:
    """ValueError naming the `ignore` patterns that match no module or parameter of `model`."""
    names = [n for n, _ in model.named_modules()] + [n for n, _ in model.named_parameters()]
    unmatched = [p for p in ignore if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"ignore patterns match no module or parameter: {', '.join(unmatched)}; "
            "use qualified names as in model.named_modules() (globs like 'layer4.*' work)"
        )


def is_ignored(module: str, parameter: str, ignore: Sequence[str]) -> bool:
    """Whether a pattern of `ignore` matches the module, a module holding it (`model.layers.0`
    for `model.layers.0.mlp.up_proj`) or the parameter."""
    parts = module.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)] + [parameter]
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in ignore)


def find_targets(model: nn.Module, ignore: Sequence[str] | None = None) -> list[Target]:
    """The weights of every nn.Linear / nn.Conv{1,2,3}d of `model` and the input projections of
    every nn.MultiheadAttention, minus `ignore` (names or
    globs of modules or parameters, as in ``model.named_modules()``). A weight shared by several
    modules (tied) is targeted once, under its first name."""
    if isinstance(ignore, str):
        ignore = [ignore]
    ignore = list(ignore or [])
    check_ignore(model, ignore)
    out, seen = [], set()
    for name, module in model.named_modules():
        for target in _targets_of(name, module):
            if is_ignored(name, target.name, ignore) or id(target.weight) in seen:
                continue
            seen.add(id(target.weight))
            out.append(target)
    return out


MHA_PROJECTIONS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _targets_of(name: str, module: nn.Module) -> list[Target]:
    """The weights of one module: an nn.Linear's, nn.Conv's or GPT-2 Conv1D's `weight`; an
    nn.MultiheadAttention's input projections (`in_proj_weight`, or `q/k/v_proj_weight` when
    key and value sizes differ; its `out_proj` is an nn.Linear)."""
    if isinstance(module, nn.MultiheadAttention):
        return [
            Target(name, module, attr)
            for attr in MHA_PROJECTIONS
            if isinstance(getattr(module, attr, None), torch.Tensor)
        ]
    if linear_layout(module):
        return [Target(name, module, transposed=True)]
    return [Target(name, module)] if _is_target(module) else []


UNTARGETED_SHARE = 0.1  # above this share of the model's weight matrices, say what stays dense


def untargeted_weights(
    model: nn.Module,
    targets: Sequence[Target],
    ignore: Sequence[str] | None = None,
    within: Sequence[str] | None = None,
) -> tuple[list[str], float]:
    """(names, share of all weight matrices) of the parameters of 2+ dims that no target covers
    and `ignore` does not name: weights held outside nn.Linear / nn.Conv (Mixtral's and
    Qwen-MoE's fused `experts.gate_up_proj` [experts, out, in], custom layers), among those of
    the modules named `within` (all when None). Embedding tables are left out: they are dense
    by design."""
    ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
    covered = {id(t.weight) for t in targets}
    covered |= {id(p) for m in model.modules() if isinstance(m, EMBEDDINGS) for p in m.parameters()}
    names, dense, seen = [], 0, set(covered)
    for name, param in model.named_parameters():
        if param.dim() < 2 or id(param) in seen or not _inside(name, within):
            continue
        seen.add(id(param))
        module, _, _ = name.rpartition(".")
        if not is_ignored(module, name, ignore):
            names.append(name)
            dense += param.numel()
    total = dense + sum(t.weight.numel() for t in targets)
    return names, (dense / total if total else 0.0)


def _inside(name: str, within: Sequence[str] | None) -> bool:
    return within is None or any(name.startswith(f"{prefix}.") for prefix in within)


def warn_untargeted(
    model: nn.Module,
    targets: Sequence[Target],
    ignore: Sequence[str] | None,
    what: str,
    within: Sequence[str] | None = None,
) -> None:
    """Warn when weights `what` does not prune (see `untargeted_weights`) are a large share of
    the model (of the modules named `within`): its sparsity would otherwise read as the
    model's."""
    names, share = untargeted_weights(model, targets, ignore, within)
    if share > UNTARGETED_SHARE:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        warnings.warn(
            f"{what} prunes linear and conv weights only: {len(names)} other weight "
            f"tensor(s) holding {share:.0%} of the weight matrices stay dense ({shown}); the "
            "reported sparsity covers the pruned layers only",
            stacklevel=3,
        )


def warn_shared(model: nn.Module, targets: Sequence[Target], consequence: str = "") -> None:
    """A pruned weight that another module holds too (an input embedding tied to ``lm_head``)
    loses the same entries there: pruning the head also prunes the embedding table, which masks
    on the head alone do not show, so say so (`consequence` adds what else happened there)."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None:
                holders.setdefault(id(param), []).append((module, f"{name}.{attr}".lstrip(".")))
    for target in targets:
        others = [n for m, n in holders.get(id(target.weight), []) if m is not target.module]
        if others:
            warnings.warn(
                f"{target.name} is shared with {', '.join(others)} (tied weights, e.g. an "
                f"input embedding tied to lm_head): pruning it zeroed the same entries there"
                f"{consequence}; pass ignore=[{target.module_name!r}] to keep it dense (as the "
                "Wanda and SparseGPT papers keep lm_head)",
                stacklevel=3,
            )


def matrix_view(weight: torch.Tensor) -> torch.Tensor:
    """The 2-D view N:M and block patterns are defined on: ``[out, in]`` for a Linear weight and
    ``[out, k... * in]`` for a conv weight ``[out, in, k...]`` with the input channels innermost
    (as channels-last kernels read them), so that N:M groups run along input channels."""
    if weight.dim() <= 2:
        return weight.reshape(weight.shape[0], -1)
    return weight.movedim(1, -1).reshape(weight.shape[0], -1)


def from_matrix(matrix: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`matrix_view` for a tensor of the weight's `shape`."""
    if len(shape) <= 2:
        return matrix.reshape(shape)
    moved = (shape[0], *shape[2:], shape[1])
    return matrix.reshape(moved).movedim(-1, 1).contiguous()
