"""Hugging Face style `config` objects follow the pruned sizes, so `save_pretrained` output loads.

Surgery knows which integer sizes changed (old -> new) but not which config field names which
size: a Llama's `hidden_size` equals its heads x head_dim, so pruning heads while keeping the
hidden size turns one 256 into 192 and leaves another. Fields whose value changed everywhere are
updated; then, where the model class can be rebuilt from its config, each update (and each
ambiguous one) is kept only if it brings the rebuilt model's parameter shapes closer to the pruned
model's.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

SIZE_FIELD_HINTS = (
    "hidden",
    "dim",
    "head",
    "embd",
    "d_model",
    "ffn",
    "inner",
    "intermediate",
    "width",
    "channels",
    "features",
    "kv",
    "_size",
    "proj",
)
NOT_SIZE_FIELD_HINTS = (
    "position",
    "vocab",
    "layers",
    "max_",
    "token",
    "type",
    "window",
    "bucket",
    "patch",
    "image",
    "batch",
    "kernel",
    "stride",
    "pool",
    "chunk",
    "num_labels",
)


def is_config(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "to_dict") and hasattr(obj, "model_type")


def update_config_sizes(model: nn.Module, sizes: dict[int, set[int]]) -> list[str]:
    """Bring the size fields of every config in `model` in line with `sizes` (each old size ->
    the sizes it becomes), settled against a model rebuilt from the config where possible.
    Returns what the user should be told (a config that cannot describe the pruned model)."""
    problems = []
    for config, owner in _configs(model):
        head_dim = _implied_head_dim(config)
        sure, maybe = _candidates(config, sizes)
        for field, (_, new) in sure.items():
            setattr(config, field, new)
        settled = (
            owner is None or not (sure or maybe) or _settle(owner, config, sure, maybe, head_dim)
        )
        if not settled:
            problems.append(
                f"{type(owner).__name__}: its config cannot describe the pruned sizes (e.g. "
                "sizes that differ per layer), so `save_pretrained` output will not load with "
                "`from_pretrained`; save with `pk.save` instead"
            )
        elif any(getattr(config, f) != old for f, (old, _) in {**sure, **maybe}.items()):
            problems += _validation_problems(config, owner)
    return problems


def _configs(model: nn.Module) -> list[tuple[Any, nn.Module | None]]:
    """Each config object with the outermost module that can be rebuilt from it (or None)."""
    out: dict[int, tuple[Any, nn.Module | None]] = {}
    for module in model.modules():  # outermost first
        config = getattr(module, "config", None)
        if not is_config(config):
            continue
        _, owner = out.get(id(config), (config, None))
        if owner is None and hasattr(type(module), "from_pretrained"):
            owner = module
        out[id(config)] = (config, owner)
    return list(out.values())


def _candidates(config: Any, sizes: dict[int, set[int]]) -> tuple[dict, dict]:
    """Size fields whose value shrinks to one new size: `sure` when every occurrence of the value
    changes, `maybe` when some occurrences also stay (then only a rebuilt model can tell)."""
    sure, maybe = {}, {}
    for field, value in vars(config).items():
        name = field.lower()
        if type(value) is not int or not any(h in name for h in SIZE_FIELD_HINTS):
            continue
        if any(h in name for h in NOT_SIZE_FIELD_HINTS):
            continue
        changed = sizes.get(value, set()) - {value}
        if len(changed) == 1:
            (maybe if value in sizes[value] else sure)[field] = (value, changed.pop())
    return sure, maybe


def _implied_head_dim(config: Any) -> int | None:
    """The head size a config implies without a `head_dim` field (hidden / heads), which models
    read with `getattr(config, "head_dim", hidden // heads)`; None when the field exists."""
    fields = vars(config)
    hidden, heads = fields.get("hidden_size"), fields.get("num_attention_heads")
    if "head_dim" in fields or not isinstance(hidden, int) or not isinstance(heads, int):
        return None
    return hidden // heads if heads > 0 and hidden % heads == 0 else None


def _settle(owner: nn.Module, config: Any, sure: dict, maybe: dict, head_dim: int | None) -> bool:
    """Keep each update (and make each possible one) only where it brings the shapes of a model
    built from the config closer to the pruned model's. False if some shapes still differ.

    If that fails and the config has no `head_dim` field, it is tried again with the head size it
    implied written out (with heads pruned and the hidden size kept, hidden / heads no longer
    gives it)."""
    start = {field: getattr(config, field) for field in {**sure, **maybe}}
    if _greedy(owner, config, sure, maybe):
        return True
    if head_dim is None:
        return False
    for field, value in start.items():
        setattr(config, field, value)
    config.head_dim = head_dim
    if _greedy(owner, config, sure, maybe):
        return True
    delattr(config, "head_dim")
    return False


def _greedy(owner: nn.Module, config: Any, sure: dict, maybe: dict) -> bool:
    score = _shape_mismatches(owner, config)
    if not score:  # None: cannot rebuild, so the unambiguous updates stand
        return True
    for field, (old, new) in sure.items():
        score = _try(owner, config, field, old, new, score)
    for field, (old, new) in maybe.items():
        score = _try(owner, config, field, new, old, score)
    return score == 0


def _try(owner: nn.Module, config: Any, field: str, value: int, current: int, score: int) -> int:
    """Set `field` to `value` if that lowers the shape mismatches, else leave it at `current`."""
    setattr(config, field, value)
    trial = _shape_mismatches(owner, config)
    if trial is not None and trial < score:
        return trial
    setattr(config, field, current)
    return score


def _validation_problems(config: Any, owner: nn.Module | None) -> list[str]:
    """Recent transformers validate configs on save and load (e.g. Llama wants the hidden size to
    be a multiple of the head count, although its modules only need head_dim)."""
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return []
    try:
        validate()
    except Exception as error:  # noqa: BLE001 - whatever the library raises, the advice is the same
        what = type(owner).__name__ if owner is not None else type(config).__name__
        return [
            f"{what}: transformers rejects the pruned config ({error.__cause__ or error}), so "
            "`save_pretrained` will fail; save with `pk.save` instead, or prune to sizes the "
            "config accepts (e.g. head counts that divide the hidden size)"
        ]
    return []


def _shape_mismatches(owner: nn.Module, config: Any) -> int | None:
    """How many parameters/buffers of `owner` a model built from `config` gets a different shape
    for (or lacks, or adds); None when the class cannot be built from a config alone."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = type(owner)(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - any class that will not rebuild just is not checked
        return None
    want = {k: tuple(v.shape) for k, v in owner.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return sum(want.get(k) != got.get(k) for k in want.keys() | got.keys())
