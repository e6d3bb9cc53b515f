"""One-shot layer-wise pruning of language models: magnitude, Wanda and SparseGPT, block by block.

`prune_layerwise` walks the model's repeated blocks (e.g. ``model.model.layers`` of a Llama) in
order, the way the Wanda and SparseGPT papers do, so only one block's statistics live at a time:

1. run the model on the calibration batches up to the first block and keep that block's inputs
   (hidden states plus the keyword inputs the model passes it: attention mask, rotary cos/sin...).
   One batch runs through all blocks first, to check that each block takes the previous one's
   output and to see whether the blocks get the same keyword inputs; blocks with their own
   (e.g. sliding-window masks) get theirs recorded for every batch;
2. for each block: record the inputs of its linear layers while running it on the stored inputs
   (Wanda: ``Σ x_j^2`` per input feature; SparseGPT: ``X^T X``), prune the layers, then run the
   *pruned* block again to get the next block's inputs (both papers' sequential variant).

A model with several stacks of blocks (the encoder and the decoder of T5 or BART) has them pruned
one after the other, each stack's inputs recorded from the model pruned so far: the decoder is
calibrated on the pruned encoder's outputs, as a block is on the pruned blocks before it.

Magnitude needs no data: every layer loses its smallest ``|W|``. Pruned weights get masks exactly
as `prunekit.sparsify` installs them (``weight_mask`` buffers), so `KeepMasks`, `sparsity_report`
and `prunekit.save` / `prunekit.load` work on the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit._hf import without_cache
from prunekit.unstructured._masks import MASK_SUFFIX, _hooks_of, attach_mask
from prunekit.unstructured._patterns import Pattern, nm_keep, parse_pattern
from prunekit.unstructured._report import LayerSparsity, SparsityReport
from prunekit.unstructured._select import prune_lowest, prune_per_row
from prunekit.unstructured._sparsegpt import HessianAccumulator, sparsegpt_prune
from prunekit.unstructured._targets import (
    Target,
    check_ignore,
    is_ignored,
    linear_layout,
    warn_shared,
    warn_untargeted,
)

METHODS = ("magnitude", "wanda", "sparsegpt")
COMPARE = ("row", "layer")
DEFAULT_SPARSITY = 0.5


@dataclass
class _Layer:
    """A linear layer to prune: ``nn.Linear`` (weight ``[out, in]``) or Hugging Face's
    ``Conv1D`` of GPT-2 (weight ``[in, out]``, ``transposed``)."""

    name: str
    module: nn.Module
    transposed: bool

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def matrix(self) -> torch.Tensor:
        """The weight as ``[out, in]`` (a view)."""
        w = self.module.weight.detach()
        return w.T if self.transposed else w

    def to_weight_shape(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.T.contiguous() if self.transposed else matrix

    @property
    def in_features(self) -> int:
        return self.matrix().shape[1]

    def pruned(self) -> torch.Tensor:
        """Entries already masked out, as ``[out, in]``."""
        mask = self.module._buffers.get("weight" + MASK_SUFFIX)
        if mask is None or not _hooks_of(self.module, "weight"):
            return torch.zeros_like(self.matrix(), dtype=torch.bool)
        if mask.shape != self.weight.shape:
            raise ValueError(
                f"{self.name}.weight has shape {list(self.weight.shape)} but its mask "
                f"{list(mask.shape)}: call prunekit.unstructured.remove_masks(model) first"
            )
        return ~(mask.T if self.transposed else mask)


def _contains_linear(module: nn.Module) -> bool:
    return any(linear_layout(m) is not None for m in module.modules())


def _repeats(container: nn.Module) -> tuple[int, int]:
    """``(children of the most common class, children)`` among the children holding linear
    layers: a stack of blocks repeats one class, a list of sublayers (T5's self-attention,
    cross-attention, feed-forward) does not."""
    kinds = [type(child) for child in container.children() if _contains_linear(child)]
    return max((kinds.count(k) for k in kinds), default=0), len(kinds)


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module, tuple[int, int]]]:
    return [
        (name, module, _repeats(module))
        for name, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and _repeats(module)[1]
    ]


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """The model's main stack of blocks: the ``nn.ModuleList`` / ``nn.Sequential`` with the most
    children of one class holding linear layers, then the most such children of any class,
    then the outermost, e.g. ``model.layers`` of a Llama."""
    candidates = _candidates(model)
    if not candidates:
        raise ValueError(
            "prune_layerwise found no nn.ModuleList or nn.Sequential of blocks holding linear "
            "layers; pass blocks=, the list of blocks the model runs in order (e.g. "
            "blocks=model.model.layers or blocks='transformer.h')"
        )
    name, module, _ = max(candidates, key=lambda c: c[2])  # the first (outermost) on ties
    return name, list(module.children())


def find_stacks(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Every stack of blocks, in module order: the main one (`find_blocks`) and each other list
    of blocks of one class outside it, such as the encoder and the decoder of T5 or BART (one of
    them alone would leave the other's linear layers dense). Lists nested in a stack (sublayers,
    experts) and lists of bare linear layers (a classifier head) are not stacks."""
    main, _ = find_blocks(model)
    stacks: list[str] = []
    for name, module, (repeats, count) in _candidates(model):
        if any(_nested(name, other) or _nested(other, name) for other in stacks):
            continue
        children = [c for c in module.children() if _contains_linear(c)]
        if name == main or (
            repeats == count and linear_layout(children[0]) is None and not _nested(main, name)
        ):
            stacks.append(name)
    return [(name, list(model.get_submodule(name).children())) for name in stacks]


def _nested(inner: str, outer: str) -> bool:
    """Whether module `inner` is `outer` or inside it (``""`` is the model itself)."""
    return outer == "" or inner == outer or inner.startswith(outer + ".")


def _resolve_blocks(model: nn.Module, blocks: Any) -> tuple[str, list[nn.Module]]:
    if isinstance(blocks, str):
        try:
            container = model.get_submodule(blocks)
        except AttributeError as e:
            raise ValueError(
                f"blocks={blocks!r} is not a submodule of the model; use a name from "
                "model.named_modules(), e.g. 'model.layers'"
            ) from e
        return blocks, list(container.children())
    if isinstance(blocks, nn.Module):
        items = list(blocks.children())
    elif isinstance(blocks, Sequence):
        items = list(blocks)
    else:
        raise TypeError(
            f"blocks must be an nn.ModuleList, a list of modules or a module name, got "
            f"{type(blocks).__name__}"
        )
    owned = {id(m) for m in model.modules()}
    if not items or any(not isinstance(b, nn.Module) or id(b) not in owned for b in items):
        raise ValueError(
            "blocks= must be a non-empty list of submodules of the model, in the order the "
            "model runs them (e.g. model.model.layers)"
        )
    return "blocks", items


def _layers_of(
    model: nn.Module, blocks: list[nn.Module], ignore: Sequence[str]
) -> list[list[_Layer]]:
    """The linear layers of every block, named as in ``model.named_modules()``, minus `ignore`;
    a weight shared by several layers is pruned once."""
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    seen: set[int] = set()
    out = []
    for block in blocks:
        layers = []
        for module in block.modules():
            transposed = linear_layout(module)
            if transposed is None or id(module.weight) in seen:
                continue
            name = names[id(module)]
            if is_ignored(name, f"{name}.weight", ignore):
                continue
            seen.add(id(module.weight))
            layers.append(_Layer(name, module, transposed))
        out.append(layers)
    return out


@dataclass(frozen=True)
class _Settings:
    """The checked pruning arguments."""

    method: str
    pattern: Pattern
    sparsity: float
    compare: str  # "row" or "layer": where magnitude / wanda scores are compared
    damping: float
    block_size: int


def _check_args(
    method: Any,
    sparsity: Any,
    pattern: Any,
    compare: Any,
    damping: Any,
    block_size: Any,
) -> _Settings:
    if method == "movement":  # a criterion of prunekit.sparsify, and of the CLI without text
        raise ValueError(
            "movement scores come from training, not from one-shot calibration: use method= "
            "magnitude, wanda or sparsegpt, or prunekit.sparsify(model, importance=Movement()) "
            "with that Movement() among prunekit.train.fit's callbacks"
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if compare is not None and (method == "sparsegpt" or compare not in COMPARE):
        raise ValueError(
            f"compare={compare!r}: use 'row' or 'layer' with method='magnitude' or 'wanda' "
            "(SparseGPT chooses its mask per block of columns, see block_size=)"
        )
    pat = parse_pattern(pattern)
    if pat.kind == "block":
        raise ValueError(
            f"prune_layerwise supports 'unstructured' and 'N:M' patterns, not {pat}; use "
            "prunekit.sparsify(model, pattern=...) for block sparsity"
        )
    if pat.kind == "nm":
        implied = 1 - pat.n / pat.m
        if sparsity is not None and not math.isclose(float(sparsity), implied, abs_tol=1e-9):
            raise ValueError(
                f"pattern {pat} fixes the sparsity at {implied:g}; got sparsity={sparsity}. "
                "Omit sparsity= with an N:M pattern"
            )
        level = implied
    else:
        level = DEFAULT_SPARSITY if sparsity is None else sparsity
        if isinstance(level, bool) or not isinstance(level, (int, float)):
            raise TypeError(f"sparsity must be a number in (0, 1), got {type(level).__name__}")
        if not 0.0 < float(level) < 1.0:
            raise ValueError(
                f"sparsity must be in (0, 1) (the fraction of zeros per layer), got {level}; "
                "e.g. 0.5 prunes half of every linear layer"
            )
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or damping < 0:
        raise ValueError(f"damping must be a number >= 0 (e.g. 0.01), got {damping!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int (e.g. 128), got {block_size!r}")
    if pat.kind == "nm" and block_size % pat.m:
        raise ValueError(
            f"block_size={block_size} must be a multiple of M={pat.m} for pattern {pat} "
            f"(e.g. block_size={pat.m * max(1, block_size // pat.m)})"
        )
    if compare is None:
        compare = "row" if method == "wanda" else "layer"
    return _Settings(method, pat, float(level), compare, float(damping), block_size)


# --- calibration: run the model up to the first block, then block by block -----------------


class _StopForward(Exception):
    """Raised by a block's pre-hook once the inputs needed are recorded (ends the forward)."""


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """``model(ids)``, ``model(*inputs)`` or ``model(**inputs)``; Hugging Face models get
    ``use_cache=False`` (a key/value cache would grow every time a block is re-run)."""
    extra = without_cache(model, {})
    if isinstance(inputs, dict):
        return model(**{**extra, **inputs})
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **extra)
    return model(inputs, **extra)


def _inputs_of(batch: Any) -> Any:
    if isinstance(batch, (torch.Tensor, dict)):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0]
    raise TypeError(
        "each calibration batch must be a tensor of token ids [B, T], an (inputs, targets) "
        f"pair or a dict of model keyword inputs, got {type(batch).__name__}"
    )


def _take(data: Any, max_batches: int | None) -> list[Any]:
    if data is None:
        raise ValueError(
            "this method needs calibration data: pass data=, an iterable of batches of token "
            "ids [B, T] (or (inputs, targets) pairs, or dicts of model inputs), e.g. 128 "
            "sequences of the training text"
        )
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be an iterable of batches (e.g. a list of [B, T] token tensors or a "
            f"DataLoader), not {type(data).__name__}; wrap a single batch as [batch]"
        )
    out = []
    for batch in data:
        out.append(_inputs_of(batch))
        if max_batches is not None and len(out) >= max_batches:
            break
    if not out:
        raise ValueError("data yielded no batches; pass at least one calibration batch")
    return out


def _is_cache(value: Any) -> bool:
    """A Hugging Face key/value cache object (``DynamicCache``...)."""
    return any(
        c.__name__.endswith("Cache") and c.__module__.startswith("transformers")
        for c in type(value).__mro__
    )


@dataclass
class _Call:
    """One batch's inputs to a block: the hidden states are ``args[0]`` (or
    ``kwargs['hidden_states']`` when the block gets no positional input); the rest is passed
    as recorded."""

    args: tuple
    kwargs: dict

    @classmethod
    def record(cls, args: tuple, kwargs: dict) -> _Call:
        # A key/value cache would be filled by every block run; the blocks never read a
        # fresh cache's (empty) past, so leaving it out changes nothing.
        args = tuple(None if _is_cache(a) else a for a in args)
        kwargs = {k: None if _is_cache(v) else v for k, v in kwargs.items()}
        first = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(first, torch.Tensor):
            raise ValueError(
                "a block was called without the hidden states as its first positional input or "
                "as hidden_states=; pass blocks= (the blocks the model runs one after the other) "
                "or forward_fn="
            )
        return cls(args, kwargs)

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor | None) -> _Call:
        if self.args:
            return _Call((hidden, *self.args[1:]), self.kwargs)
        return _Call((), {**self.kwargs, "hidden_states": hidden})

    def run(self, block: nn.Module) -> torch.Tensor:
        return _first_output(block(*self.args, **self.kwargs))


def _first_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "to_tuple"):
        return out.to_tuple()[0]
    raise TypeError(
        f"a block returned {type(out).__name__}; blocks must return the hidden states "
        "(a tensor, or a tuple whose first item is the tensor)"
    )


def _tensors(obj: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    if hasattr(obj, "to_tuple"):
        obj = obj.to_tuple()
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _record(
    model: nn.Module,
    blocks: list[nn.Module],
    inputs: Any,
    forward: Callable[[nn.Module, Any], Any],
    stack: str | None = None,
) -> list[_Call]:
    """Run the model on one batch up to the last of `blocks` and return every block's inputs
    (stops early: the last block and what follows it never run). `stack` names blocks that run
    after another pruned stack (a decoder), for the error when the batch cannot reach them."""
    calls: list[list[_Call]] = [[] for _ in blocks]

    def recorder(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[index].append(_Call.record(tuple(args), dict(kwargs)))
            if index == len(blocks) - 1:
                raise _StopForward

        return hook

    handles = [
        b.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, b in enumerate(blocks)
    ]
    try:
        forward(model, inputs)
    except _StopForward:
        pass
    except Exception as e:
        if stack is None or calls[0]:
            raise
        raise ValueError(
            f"the model failed on a calibration batch before reaching {stack} ({e}); "
            "prune_layerwise prunes every stack of blocks, so the batches must run through all "
            "of them (an encoder-decoder model needs decoder inputs too, e.g. dicts with "
            "input_ids and labels or decoder_input_ids), or pass blocks= to prune one stack"
        ) from e
    finally:
        for h in handles:
            h.remove()
    counts = [len(c) for c in calls]
    if counts[0] == 0:
        raise ValueError(
            "the calibration batch never reached the first block; check data= and "
            "forward_fn=, or pass blocks= (the blocks the model actually runs)"
        )
    wrong = [i for i, n in enumerate(counts) if n != 1]
    if wrong:
        raise ValueError(
            f"block {wrong[0]} ran {counts[wrong[0]]} times in one forward; layer-wise pruning "
            "needs blocks that each run once, one after the other: pass blocks="
        )
    return [c[0] for c in calls]


def _extras(call: _Call) -> list[torch.Tensor]:
    """The tensors a block gets besides its hidden states."""
    return _tensors(call.with_hidden(None).args) + _tensors(call.kwargs)


Links = dict[int, list[tuple[int, int]]]


def _check_chain(blocks: list[nn.Module], calls: list[_Call]) -> Links:
    """Each block must take the previous block's output as its hidden states (checked on one
    batch of the dense model), or running the blocks one by one on the stored inputs would
    compute something else. Returns the other tensors a block passes to the next one (e.g. the
    position bias of T5): ``{block: [(index among the previous block's outputs, index among the
    block's other inputs)]}``; they are checked again once the blocks are pruned."""
    links: Links = {}
    hidden = calls[0].hidden
    for index in range(1, len(blocks)):
        previous = calls[index - 1].with_hidden(hidden)
        out = blocks[index - 1](*previous.args, **previous.kwargs)
        hidden, ref = _first_output(out), calls[index].hidden
        if not _close(hidden, ref):
            raise ValueError(
                f"block {index} does not take block {index - 1}'s output as its input; pass "
                "blocks=, the blocks the model runs one after the other on the hidden states "
                "(e.g. blocks=model.model.layers), or forward_fn="
            )
        carried, extras = _tensors(out)[1:], _extras(calls[index])
        pairs = [
            (i, j) for i, c in enumerate(carried) for j, e in enumerate(extras) if _close(c, e)
        ]
        if pairs:
            links[index] = pairs
        hidden = ref
    return links


def _check_links(block: int, out: Any, receiver: _Call, links: Links) -> None:
    """What a pruned block passes on besides the hidden states must not have changed."""
    carried, extras = _tensors(out)[1:], _extras(receiver)
    for i, j in links.get(block, []):
        if not _close(carried[i], extras[j]):
            raise ValueError(
                f"block {block} takes more than the hidden states from block {block - 1}, and "
                "that input changes with pruning (e.g. a separate residual stream); "
                "prune_layerwise re-runs blocks on the hidden states alone: pass blocks= "
                "wrapping such blocks into ones that take and return one tensor"
            )


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or not a.is_floating_point() or not b.is_floating_point():
        return False
    scale = float(b.detach().abs().max()) if b.numel() else 0.0
    tol = 1e-3 if b.dtype in (torch.float32, torch.float64) else 2e-2
    return float((a - b).abs().max()) <= tol * (scale or 1.0) if b.numel() else True


@dataclass
class _Inputs:
    """The current block's input hidden states for every batch, and the other inputs of every
    block (``templates[block][batch]``)."""

    hidden: list[torch.Tensor]
    templates: list[list[_Call]]
    links: Links

    def calls(self, index: int) -> list[_Call]:
        return [t.with_hidden(h) for t, h in zip(self.templates[index], self.hidden)]

    def advance(self, index: int, block: nn.Module, calls: list[_Call]) -> None:
        """Replace the stored hidden states by the (pruned) block's outputs, batch by batch."""
        for batch, call in enumerate(calls):
            out = block(*call.args, **call.kwargs)
            _check_links(index + 1, out, self.templates[index + 1][batch], self.links)
            self.hidden[batch] = _first_output(out)
            calls[batch] = None  # free the old input early


def _capture(
    model: nn.Module,
    blocks: list[nn.Module],
    batches: list[Any],
    forward: Callable[[nn.Module, Any], Any],
    stack: str | None = None,
) -> _Inputs:
    """Record the blocks' inputs: every batch runs up to the last block, so that each block gets
    the keyword inputs the model passes it for that batch (sliding-window layers get their own
    masks, and whether they do can depend on the batch: its length, its padding). The first
    batch also checks that the blocks form a chain."""
    first = _record(model, blocks, batches[0], forward, stack)
    links = _check_chain(blocks, first)
    per_batch = [first] + [_record(model, blocks, x, forward, stack) for x in batches[1:]]
    templates = [[calls[k].with_hidden(None) for calls in per_batch] for k in range(len(blocks))]
    return _Inputs([calls[0].hidden for calls in per_batch], templates, links)


# --- statistics and pruning of one layer ----------------------------------------------------


class _Stats:
    """Input statistics of one layer: per-feature ``Σ x^2`` (wanda) or ``X^T X`` (sparsegpt)."""

    def __init__(self, layer: _Layer, method: str) -> None:
        self.layer = layer
        self.method = method
        n, device = layer.in_features, layer.weight.device
        self.sumsq = torch.zeros(n, dtype=torch.float64, device=device)
        self.hessian = HessianAccumulator(n, device) if method == "sparsegpt" else None
        self.seen = False

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = (args[0] if args else next(iter(kwargs.values()))).detach()
        self.seen = True
        if self.hessian is not None:
            self.hessian.add(x)
        else:
            self.sumsq += (x.float() ** 2).reshape(-1, x.shape[-1]).sum(0).double()


def _keep_mask(
    layer: _Layer, settings: _Settings, stats: _Stats | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(keep mask [out, in], new weight [out, in] or None)`` of one layer."""
    w = layer.matrix().float()
    forced = layer.pruned()
    pat = settings.pattern
    if settings.method == "sparsegpt":
        assert stats is not None and stats.hessian is not None
        new, keep = sparsegpt_prune(
            w,
            stats.hessian.hessian(),
            sparsity=settings.sparsity,
            nm=(pat.n, pat.m) if pat.kind == "nm" else None,
            forced=forced,
            damping=settings.damping,
            block_size=settings.block_size,
        )
        return keep, new
    scores = w.abs()
    if settings.method == "wanda":
        assert stats is not None
        scores = scores * stats.sumsq.sqrt().float()[None, :]
    if pat.kind == "nm":
        return nm_keep(pat, scores, forced), None
    k = round(settings.sparsity * w.numel())
    select = prune_per_row if settings.compare == "row" else prune_lowest
    return ~select(scores, forced, k), None


@dataclass
class _Backup:
    weight: torch.Tensor
    mask: torch.Tensor | None
    hooked: bool


def _backup(layer: _Layer) -> _Backup:
    mask = layer.module._buffers.get("weight" + MASK_SUFFIX)
    return _Backup(
        layer.weight.detach().clone(),
        None if mask is None else mask.clone(),
        bool(_hooks_of(layer.module, "weight")),
    )


def _restore(layer: _Layer, saved: _Backup) -> None:
    module = layer.module
    with torch.no_grad():
        layer.weight.copy_(saved.weight)
    name = "weight" + MASK_SUFFIX
    if saved.mask is not None:
        module._buffers[name] = saved.mask
    elif name in module._buffers:
        del module._buffers[name]
    if not saved.hooked:
        for key in _hooks_of(module, "weight"):
            module._forward_pre_hooks.pop(key).detach()


def _apply(layer: _Layer, keep: torch.Tensor, new: torch.Tensor | None) -> None:
    with torch.no_grad():
        if new is not None:
            layer.weight.copy_(layer.to_weight_shape(new).to(layer.weight.dtype))
        attach_mask(layer.module, "weight", layer.to_weight_shape(keep))


class _BlockProgress:
    def __init__(self, enabled: bool, total: int, method: str) -> None:
        self.enabled, self.total, self.method = enabled, total, method
        self.bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress

            console = Console(stderr=True)
            if console.is_terminal:
                self.bar = Progress(console=console, transient=True)
                self.bar.start()
                task = self.bar.add_task(f"{self.method} blocks", total=self.total)
                return lambda: self.bar.advance(task)
        return lambda: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fits(layers: list[list[_Layer]], pat: Pattern) -> list[list[_Layer]]:
    if pat.kind != "nm":
        return layers
    import warnings

    out = [[layer for layer in block if layer.in_features % pat.m == 0] for block in layers]
    skipped = [x.name for block, kept in zip(layers, out) for x in block if x not in kept]
    if skipped:
        warnings.warn(
            f"pattern {pat} needs an input size divisible by {pat.m}; left dense: "
            f"{', '.join(skipped)} (pass ignore= to silence this)",
            stacklevel=3,
        )
    return out


def prune_layerwise(
    model: nn.Module,
    data: Iterable[Any] | None = None,
    sparsity: float | None = None,
    method: str = "sparsegpt",
    pattern: str = "unstructured",
    *,
    blocks: Any = None,
    ignore: Sequence[str] | None = None,
    compare: str | None = None,
    damping: float = 0.01,
    block_size: int = 128,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> SparsityReport:
    """Prune every linear layer of the model's blocks one-shot, block by block, in place.

    `method`: "magnitude" (smallest ``|W|`` of each layer, no data), "wanda" (Sun et al. 2023:
    ``|W_ij| * ||X_j||``, compared within each output row) or "sparsegpt" (Frantar & Alistarh
    2023: second-order reconstruction that also updates the weights it keeps). `data`: calibration
    batches (token ids ``[B, T]``, ``(inputs, targets)`` pairs or dicts of model inputs; at most
    `max_batches` are read). `sparsity`: fraction of zeros per layer (default 0.5); `pattern`:
    "unstructured" or "N:M" (e.g. "2:4", sparsity implied). `blocks`: the repeated blocks (an
    ``nn.ModuleList``, a list, or a name such as "model.layers"); by default every stack of
    blocks (`find_stacks`: the ModuleList or Sequential repeating one block class the most times,
    and any other list of blocks outside it, such as T5's encoder and decoder), pruned in module
    order. Only linears inside the blocks are pruned (embeddings, ``lm_head`` stay dense, as in
    both papers); `ignore` leaves more dense (names or globs). A pruned weight that another
    module shares (``lm_head`` tied to the input embedding, when `blocks` holds the head) loses
    the same entries there, and SparseGPT's updates change it too: a warning names it.
    `compare`: where magnitude / wanda scores compete for the unstructured sparsity, "row"
    (every output row loses the same fraction; wanda's default, as in the paper) or "layer"
    (magnitude's default). `damping` (λ = damping · mean diag H) and `block_size` tune SparseGPT.
    `forward_fn(model, inputs)` calls the model (default ``model(ids, use_cache=False)`` /
    ``model(**inputs)``).

    Each block must take the previous block's output as its hidden states (checked on one batch;
    true of Llama, GPT-2, Mistral, Qwen, T5...), and the batches must run through every stack
    (an encoder-decoder model needs decoder inputs, e.g. dicts with ``labels``). Pruned weights
    get ``weight_mask`` buffers (see `KeepMasks` for fine-tuning). On any error the model is
    restored. Returns the `SparsityReport` of the pruned layers.

    >>> import torch, prunekit as pk
    >>> blocks = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()) for _ in range(2)]
    >>> model = torch.nn.Sequential(*blocks)
    >>> data = [torch.randn(16, 8) for _ in range(2)]
    >>> pk.unstructured.prune_layerwise(model, data, 0.5, "sparsegpt", progress=False).sparsity
    0.5
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune_layerwise expects an nn.Module, got {type(model).__name__}")
    settings = _check_args(method, sparsity, pattern, compare, damping, block_size)
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    if isinstance(ignore, str):
        ignore = [ignore]
    ignore = list(ignore or [])
    check_ignore(model, ignore)
    stacks = find_stacks(model) if blocks is None else [_resolve_blocks(model, blocks)]
    block_list = [block for _, stack in stacks for block in stack]
    layers = _fits(_layers_of(model, block_list, ignore), settings.pattern)
    flat = [layer for block in layers for layer in block]
    in_blocks = {id(block) for block in block_list}
    block_names = [name for name, m in model.named_modules() if id(m) in in_blocks]
    targets = [Target(layer.name, layer.module, transposed=layer.transposed) for layer in flat]
    warn_untargeted(model, targets, ignore, "prune_layerwise", within=block_names)
    if not flat:
        raise ValueError(
            "the blocks hold no linear layer to prune (or ignore= excludes them all); pass "
            "blocks= (e.g. blocks=model.model.layers)"
        )
    for layer in flat:
        layer.pruned()  # fail on stale masks before anything runs
    batches = _take(data, max_batches) if method != "magnitude" else []

    backups: dict[int, tuple[_Layer, _Backup]] = {}
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        forward = forward_fn or default_forward
        with torch.no_grad(), _BlockProgress(progress, len(block_list), method) as advance:
            run = _StackRun(model, settings, batches, forward, advance, backups)
            start = 0
            for number, (name, stack) in enumerate(stacks):
                run.prune(stack, layers[start : start + len(stack)], name if number else None)
                start += len(stack)
    except BaseException:
        for layer, saved in backups.values():
            _restore(layer, saved)
        raise
    finally:
        for module, training in modes.items():
            module.training = training
    updated = " and SparseGPT also changed the entries it kept" if method == "sparsegpt" else ""
    warn_shared(model, targets, updated)
    return _report(flat)


@dataclass
class _StackRun:
    """Prunes the stacks of blocks one after the other, keeping a backup of every layer."""

    model: nn.Module
    settings: _Settings
    batches: list[Any]
    forward: Callable[[nn.Module, Any], Any]
    advance: Callable[[], None]  # the progress bar's
    backups: dict[int, tuple[_Layer, _Backup]]  # the layers pruned so far

    def prune(self, blocks: list[nn.Module], layers: list[list[_Layer]], name: str | None) -> None:
        """Prune one stack block by block. Its inputs are recorded from the model as pruned so
        far, so a decoder is calibrated on the pruned encoder's outputs (the papers' sequential
        variant, across stacks too). `name`: the stack's, unless it is the first."""
        inputs = None
        if self.batches:
            inputs = _capture(self.model, blocks, self.batches, self.forward, name)
        for index, (block, block_layers) in enumerate(zip(blocks, layers)):
            calls = inputs.calls(index) if inputs is not None else []
            stats = _collect(block, block_layers, calls, self.settings.method) if calls else {}
            for layer in block_layers:
                keep, new = _keep_mask(layer, self.settings, stats.get(id(layer)))
                self.backups.setdefault(id(layer), (layer, _backup(layer)))
                _apply(layer, keep, new)
            if inputs is not None and index + 1 < len(blocks):
                inputs.advance(index, block, calls)
            self.advance()


def _collect(
    block: nn.Module, layers: list[_Layer], calls: list[_Call], method: str
) -> dict[int, _Stats]:
    """Run `block` on the stored inputs, recording the inputs of its layers."""
    stats = {id(layer): _Stats(layer, method) for layer in layers}
    handles = [
        layer.module.register_forward_pre_hook(stats[id(layer)], with_kwargs=True)
        for layer in layers
    ]
    try:
        for call in calls:
            call.run(block)
    finally:
        for h in handles:
            h.remove()
    missing = [layer.name for layer in layers if not stats[id(layer)].seen]
    if missing:
        raise ValueError(
            f"{method}: the calibration data never reached {', '.join(missing[:5])}; "
            "ignore= those layers or pass data that runs through them"
        )
    return stats


def _report(layers: list[_Layer]) -> SparsityReport:
    return SparsityReport(
        [
            LayerSparsity(
                name=f"{layer.name}.weight",
                shape=tuple(layer.weight.shape),
                numel=layer.weight.numel(),
                nonzeros=int(torch.count_nonzero(layer.weight.detach())),
                masked=True,
            )
            for layer in layers
        ]
    )
