"""Hugging Face style `config` objects follow the pruned sizes, so `save_pretrained` output loads.

Surgery knows which integer sizes changed (old -> new) but not which config field names which
size: a Llama's `hidden_size` equals its heads x head_dim, so pruning heads while keeping the
hidden size turns one 256 into 192 and leaves another. Fields whose value changed everywhere are
updated; then, where the model class can be rebuilt from its config, each update (and each
ambiguous one) is kept only if it brings the rebuilt model's parameter shapes closer to the pruned
model's. Where shapes still differ, fields the name hints miss and the elements of list fields
(Mamba's `time_step_rank`, ConvNeXt's per-stage `hidden_sizes`) are tried the same way. Last, the
class is built from the config once more: a refusal (BERT's hidden size must be a multiple of the
head count) or any tensor shape that differs from the pruned model's is reported.
"""

from __future__ import annotations

import copy
import itertools
import math
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
WIDEN_SKIP_HINTS = (*NOT_SIZE_FIELD_HINTS, "depth", "stage", "index", "indices", "_id", "seed")


def is_config(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "to_dict") and hasattr(obj, "model_type")


def update_config_sizes(model: nn.Module, sizes: dict[int, set[int]]) -> list[str]:
    """Bring the size fields of every config in `model` in line with `sizes` (each old size ->
    the sizes it becomes), settled against a model rebuilt from the config where possible, and
    check the result by rebuilding once more. Returns what the user should be told (a config
    that cannot describe the pruned model, or that transformers refuses)."""
    problems = []
    for config, owner in _configs(model):
        before = dict(vars(config))
        head_dim = _implied_head_dim(config)
        sure, maybe = _candidates(config, sizes)
        for field, (_, new) in sure.items():
            setattr(config, field, new)
        if owner is not None and _checkable(owner, config, before):
            if sure or maybe:
                _settle(owner, config, sure, maybe, head_dim)
            _widen(owner, config, sizes, skip=sure.keys() | maybe.keys())
            found = _rebuild_problems(owner, config)
            if found:  # the advice (pk.save) is the same for whatever else differs
                problems += found
                continue
            problems += _reload_problems(owner, config, sizes)
        if _changed(config, before):
            problems += _validation_problems(config, owner)
    return problems


def _checkable(owner: nn.Module, config: Any, before: dict[str, Any]) -> bool:
    """Whether `owner`'s class builds from a config alone: from the updated config, or else from
    the config as it was (its fields `before`; then refusing the updated one is the pruned sizes'
    doing). A class that needs more than a config is not checked."""
    if _rebuilt(owner, config) is not None:
        return True
    original = copy.copy(config)
    vars(original).clear()
    vars(original).update(before)
    return _rebuilt(owner, original) is not None


def _changed(config: Any, before: dict[str, Any]) -> bool:
    now = vars(config)
    return now.keys() != before.keys() or any(
        now[k] is not v and now[k] != v for k, v in before.items()
    )


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
    gives it). If the class refused the updated config to begin with (BERT's hidden size must be
    a multiple of the head count) and nothing it accepts matches, the updates stand: the config
    records the pruned sizes, and the refusal is what gets reported."""
    start = {field: getattr(config, field) for field in {**sure, **maybe}}
    refused = _rebuilt(owner, config) is None
    if _greedy(owner, config, sure, maybe):
        return True
    settable = not isinstance(getattr(type(config), "head_dim", None), property)  # Falcon's is not
    if head_dim is not None and settable:
        for field, value in start.items():
            setattr(config, field, value)
        config.head_dim = head_dim
        if _greedy(owner, config, sure, maybe):
            return True
        delattr(config, "head_dim")
    if refused:
        for field, value in start.items():
            setattr(config, field, value)
    return False


def _greedy(owner: nn.Module, config: Any, sure: dict, maybe: dict) -> bool:
    score = _mismatches(owner, config)
    if score == (0, 0):
        return True
    for field, (old, _) in sure.items():
        score = _try(owner, config, {field: old}, score)
    for field, (_, new) in maybe.items():
        score = _try(owner, config, {field: new}, score)
    # fields that only move together (heads and KV heads, whose ratio the modules keep)
    pending = [f for f, (_, new) in maybe.items() if getattr(config, f) != new]
    for a, b in itertools.combinations(pending, 2):
        if score != (0, 0) and getattr(config, a) != maybe[a][1]:
            score = _try(owner, config, {a: maybe[a][1], b: maybe[b][1]}, score)
    return score[0] == 0


def _try(
    owner: nn.Module, config: Any, values: dict[str, Any], score: tuple[float, float]
) -> tuple[float, float]:
    """Set the fields to `values` if that lowers the mismatches (shapes first), else leave them."""
    current = {field: getattr(config, field) for field in values}
    for field, value in values.items():
        setattr(config, field, value)
    trial = _mismatches(owner, config)
    if trial < score:
        return trial
    for field, value in current.items():
        setattr(config, field, value)
    return score


def _widen(owner: nn.Module, config: Any, sizes: dict[int, set[int]], skip) -> None:
    """Where the rebuilt shapes still differ, try the fields `_candidates` leaves out: ints whose
    names the hints miss (Mamba's `time_step_rank`, the rows of x_proj it shares with the state
    size) and each element of int lists (ConvNeXt's per-stage `hidden_sizes`), set to a size
    their value became (in `sizes`, or in the dimensions where the shapes differ); each is kept
    only if it brings the rebuilt shapes closer."""
    fresh = _rebuilt(owner, config)
    if fresh is None:
        return
    want, got = _shapes(owner), _shapes(fresh)
    if all(want.get(k) == got.get(k) for k in want.keys() | got.keys()):
        return
    becomes = {old: set(new) - {old} for old, new in sizes.items()}
    for key in want.keys() & got.keys():
        if len(want[key]) == len(got[key]):
            for new, old in zip(want[key], got[key]):
                if new != old:
                    becomes.setdefault(old, set()).add(new)
    score = _score(owner, fresh)
    for field, value in list(vars(config).items()):
        name = field.lower()
        if field in skip or field.startswith("_") or any(h in name for h in WIDEN_SKIP_HINTS):
            continue
        if type(value) is int:
            trials = [(None, size) for size in sorted(becomes.get(value, ()))]
        elif isinstance(value, (list, tuple)) and value and all(type(v) is int for v in value):
            trials = [(i, size) for i, v in enumerate(value) for size in sorted(becomes.get(v, ()))]
        else:
            continue
        for index, size in trials:
            current = getattr(config, field)
            if index is None:
                if current != value:  # an earlier trial moved it already
                    continue
                new = size
            else:
                if current[index] != value[index]:
                    continue
                new = type(current)([*current[:index], size, *current[index + 1 :]])
            score = _try(owner, config, {field: new}, score)
            if score[0] == 0:
                return


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


def _build(owner: nn.Module, config: Any) -> nn.Module:
    """`owner`'s class built from `config` on the meta device (no memory, no init cost), as
    `from_pretrained` builds it before loading the weights; raises what the class raises."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return type(owner)(copy.deepcopy(config))


def _rebuilt(owner: nn.Module, config: Any) -> nn.Module | None:
    """`_build`, or None when the class will not build from `config`."""
    try:
        return _build(owner, config)
    except Exception:  # noqa: BLE001 - a refusal is reported by `_rebuild_problems`
        return None


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor `module` saves, and of its other buffers (a rotary embedding's
    inverse frequencies are computed from the config when built)."""
    out = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for name, buffer in module.named_buffers(remove_duplicate=False):
        out.setdefault(name, tuple(buffer.shape))
    return out


def _mismatches(owner: nn.Module, config: Any) -> tuple[float, float]:
    """How a model built from `config` differs from `owner`: the parameters/buffers it gets a
    different shape for (or lacks, or adds), then the number attributes of its modules that
    differ (Qwen2's `head_dim`, read as hidden // heads: 2 heads x 8 and 4 heads x 4 give the same
    shapes); infinitely when the class refuses the config."""
    fresh = _rebuilt(owner, config)
    return (math.inf, math.inf) if fresh is None else _score(owner, fresh)


def _score(owner: nn.Module, fresh: nn.Module) -> tuple[int, int]:
    want, got = _shapes(owner), _shapes(fresh)
    shapes = sum(want.get(k) != got.get(k) for k in want.keys() | got.keys())
    return shapes, len(_attribute_differences(owner, fresh))


def _rebuild_problems(owner: nn.Module, config: Any) -> list[str]:
    """What `from_pretrained` would make of `save_pretrained` output: the class refuses the
    config, or builds tensors of other shapes than the pruned model's (or lacks some of them;
    tensors only the rebuilt model has are ignored, as `from_pretrained` initialises them)."""
    what = type(owner).__name__
    try:
        fresh = _build(owner, config)
    except Exception as error:  # noqa: BLE001 - whatever the class raises, the advice is the same
        reason = " ".join(str(error.__cause__ or error).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        return [
            f"{what}: transformers rejects the pruned config ({reason or type(error).__name__}), "
            "so `save_pretrained` output will not load with `from_pretrained`; save with "
            "`pk.save` instead, or prune to sizes the config accepts (e.g. head counts that "
            "divide the hidden size)"
        ]
    want, got = _shapes(owner), _shapes(fresh)
    left = [
        f"{k} {_dims(shape)} (reloaded: {_dims(got[k]) if k in got else 'missing'})"
        for k, shape in want.items()
        if got.get(k) != shape
    ]
    if not left:
        return []
    return [
        f"{what}: its config cannot describe the pruned sizes (e.g. sizes that differ per layer, "
        f"or a size no config field holds): a model built from it differs in "
        f"{', '.join(left[:3])}{f' and {len(left) - 3} more' if len(left) > 3 else ''}, so "
        "`save_pretrained` output will not load with `from_pretrained`; save with `pk.save` "
        "instead"
    ]


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def _attribute_differences(owner: nn.Module, fresh: nn.Module) -> list[tuple[str, str, Any, Any]]:
    """(module, attribute, value in `owner`, value in `fresh`) for every int or float attribute
    that differs between modules of the same name."""
    rebuilt = dict(fresh.named_modules())
    out = []
    for name, module in owner.named_modules():
        twin = rebuilt.get(name)
        for attr, value in vars(module).items() if twin is not None else ():
            other = getattr(twin, attr, None)
            if type(value) not in (int, float) or type(other) is not type(value):
                continue
            if other != value and not (type(value) is float and math.isclose(value, other)):
                out.append((name, attr, value, other))
    return out


def _reload_problems(owner: nn.Module, config: Any, sizes: dict[int, set[int]]) -> list[str]:
    """Compare `owner` with the model its config rebuilds (what `from_pretrained` will make).
    Size attributes surgery left stale because no op reads them (a layer's `hidden_size`) take
    the rebuilt value when that is the size they became; any other difference (Gemma's embedding
    scale, sqrt of the original hidden size) means a reload would compute something else."""
    fresh = _rebuilt(owner, config)
    if fresh is None:
        return []
    left = []
    for name, attr, value, other in _attribute_differences(owner, fresh):
        if type(value) is int and other in sizes.get(value, ()):
            setattr(owner.get_submodule(name), attr, other)
        elif type(value) is float or sizes.get(value, {value}) != {value}:  # not a runtime count
            left.append(f"{name + '.' if name else ''}{attr} {value:g} (reloaded: {other:g})")
    if not left:
        return []
    return [
        f"{type(owner).__name__}: a model built from the pruned config differs in "
        f"{', '.join(left[:3])}{' ...' if len(left) > 3 else ''}, so `save_pretrained` output "
        "would not reproduce the pruned model; save with `pk.save` instead"
    ]
