"""Choose which channels each group keeps, from scores, a ratio or per-group ratios."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunekit.graph.atoms import PROD
from prunekit.structured.literal_sources import literal_sources
from prunekit.structured.plan import Plan, PlanGroup

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph, Group


def output_owner(name: str, dim: int, transposed: set[str]) -> str | None:
    """The module whose OUTPUT channels a parameter dim carries (weight dim 0, bias), else None."""
    module, _, leaf = name.rpartition(".")
    out_dim = 1 if module in transposed and leaf == "weight" else 0
    if dim == out_dim:
        return module or name
    return None


def _outputs_on_dim1(module: nn.Module) -> bool:
    """Weights laid out [in, out]: transposed convs, embeddings ([vocab, dim]) and Hugging Face's
    GPT-2 `Conv1D` ([in, out], which records its output size as `nf`)."""
    if getattr(module, "transposed", False) or isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return True
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def ignored_groups(graph: DependencyGraph, ignore: list[str] | str | None) -> set[str]:
    """Groups carrying the output channels of an ignored module (names or globs)."""
    if isinstance(ignore, str):  # one pattern, not its characters
        ignore = [ignore]
    return set().union(*output_groups(graph, ignore or [], "ignore").values())


def output_groups(
    graph: DependencyGraph, patterns: Sequence[str], option: str
) -> dict[str, set[str]]:
    """Per pattern (a module or parameter name, or a glob), the groups carrying the OUTPUT
    channels of what it matches: a conv's own filters, not the channels it reads. A pattern that
    matches nothing is refused, naming `option`."""
    if not patterns:
        return {}
    transposed = {name for name, m in graph.model.named_modules() if _outputs_on_dim1(m)}
    names = [n for n, _ in graph.model.named_modules()] + list(graph.param_shapes)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(
            f"{option} patterns match no module or parameter: {', '.join(unmatched)}; "
            "use qualified names as in model.named_modules() (globs like 'layer4.*' work)"
        )
    keys: dict[str, set[str]] = {p: set() for p in patterns}
    for g in graph.groups:
        for m in g.members:
            owner = output_owner(m.name, m.dim, transposed)
            if owner is None:
                continue
            # the owner, the modules holding it ("head" for head.0) and the parameter itself
            names = [owner, *_containers(owner), m.name]
            for p in patterns:
                if any(fnmatch.fnmatchcase(n, p) for n in names):
                    keys[p].add(g.key)
    return keys


def _containers(name: str) -> list[str]:
    """The qualified names of the modules holding `name`: a.b.c -> a, a.b."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def check_overrides(overrides: dict[str, float] | None) -> dict[str, float]:
    """`overrides` if it is a {name or glob: ratio in [0, 1)} dict (empty for None)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict {{name or glob: ratio}}, not {overrides!r}")
    for pattern, r in overrides.items():
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0.0 <= r < 1.0:
            raise ValueError(
                f"overrides[{pattern!r}] must be a ratio in [0, 1) (fraction removed), got {r!r}"
            )
    return overrides


def override_ratios(
    graph: DependencyGraph, overrides: dict[str, float] | None, active: list[Group]
) -> dict[str, float]:
    """`overrides` ({name or glob: ratio}) as ratios of the active groups carrying the matched
    modules' output channels; a later pattern wins where two match one group."""
    if not check_overrides(overrides):
        return {}
    keys = {g.key for g in active}
    ratios: dict[str, float] = {}
    for pattern, matched in output_groups(graph, list(overrides), "overrides").items():
        ratios.update(dict.fromkeys(matched & keys, float(overrides[pattern])))
    return ratios


def factor_exclusions(graph: DependencyGraph, attention: str) -> set[str]:
    """Groups left whole so that a product (heads x head dims, groups x channels per group) is
    pruned along one factor only: the innermost by default (head dims, channels in every group),
    the outermost with attention="heads" (whole heads; whole KV groups under GQA) or when the
    innermost cannot be pruned (rotary embeddings derive values from the head size). Middle
    factors (queries per KV group) are never pruned by default.
    """
    by_atom = {g.atom: g.key for g in graph.groups}
    atoms = graph.tracer.atoms
    products = [f for f in atoms.product_factors() if sum(a in by_atom for a in f) >= 1]

    def first(f):
        return next(a for a in f if a in by_atom)

    def groups_in(factors):  # a concatenated factor (rotary halves of head dims) by its leaves
        return {leaf for a in factors for leaf in atoms.leaves(a) if leaf in by_atom}

    # heads whose head dims cannot shrink somewhere (rotary) are pruned as whole heads everywhere
    heads = {first(f) for f in products if f[-1] not in by_atom and len(f) > 1}
    if attention == "heads":
        heads |= {first(f) for f in products if len(f) > 1}
    excluded: set[int] = set()
    for f in products:
        chosen = [a for a in f if a in heads]
        if chosen:
            excluded.update(groups_in(a for a in f if a != chosen[0]))
        else:  # head dims (channels in every group): every factor but the innermost stays whole
            excluded.update(groups_in(f[:-1]))
    return {by_atom[a] for a in excluded}


def active_groups(graph: DependencyGraph, ignore: list[str] | None, attention: str) -> list[Group]:
    """Groups that may lose channels (not ignored, not the excluded factor of a product)."""
    if attention not in ("dims", "heads"):
        raise ValueError(f"attention must be 'dims' (head dims) or 'heads', got {attention!r}")
    skip = ignored_groups(graph, ignore) | factor_exclusions(graph, attention) | width_frozen(graph)
    skip |= literal_frozen(graph)
    return [g for g in graph.groups if g.key not in skip]


def plan_from_counts(
    graph: DependencyGraph, scores: dict[str, torch.Tensor], counts: dict[str, int]
) -> Plan:
    """A plan keeping the `counts[key]` highest-scoring channels of each group (all if absent)."""
    groups = []
    for g in graph.groups:
        keep = counts.get(g.key, g.size)
        indices = top_indices(scores[g.key], keep) if keep < g.size else list(range(g.size))
        groups.append(PlanGroup(g.key, g.size, indices, [f"{m.name}:{m.dim}" for m in g.members]))
    return Plan(groups=groups, inputs=list(graph.input_specs))


def kept_count(size: int, ratio: float, step: int = 1) -> int:
    """Channels kept when removing `ratio` of `size` (at least 1; a multiple of `step`, the
    group's `rounding`, where the group is that large)."""
    keep = size - int(math.floor(ratio * size + 1e-9))
    if step > 1 and size >= step:
        keep = max(step, int(round(keep / step)) * step)
    return max(1, min(size, keep))


def rounding(graph: DependencyGraph, round_to: int | None) -> dict[str, int]:
    """Per group, the step its kept count moves in so that every channel count it sets stays a
    multiple of `round_to`. A group repeated r times along a channel dim (the channels per group
    of a grouped conv or GroupNorm, repeated in every group) needs only round_to / gcd(round_to,
    r): 8 groups of 8 channels may keep 4 per group, the layer keeping 32. Empty without
    rounding."""
    if not round_to or round_to < 2:
        return {}
    memo = ("rounding", round_to)
    if memo not in graph.cache:
        repeats = _repeats(graph)
        graph.cache[memo] = {
            g.key: math.lcm(*(round_to // math.gcd(round_to, r) for r in repeats.get(g.key, {1})))
            for g in graph.groups
        }
    return graph.cache[memo]


def _repeats(graph: DependencyGraph) -> dict[str, set[int]]:
    """Per group, how many times its channels repeat in each activation dim that holds them."""
    atoms = graph.tracer.atoms
    key_of = {atoms.find(g.atom): g.key for g in graph.groups}
    out: dict[str, set[int]] = {}
    for node in graph.exported.graph.nodes:
        if node.op == "placeholder":  # parameters' own dims are per group (in channels / group)
            continue
        for atom in graph.tracer.node_dims.get(node.name) or []:
            for leaf, times in _occurrences(atoms, atom, 1):
                if leaf in key_of:
                    out.setdefault(key_of[leaf], set()).add(times)
    return out


def _occurrences(atoms, atom: int, times: int):
    """(leaf, how many times it repeats) for every leaf under `atom`: the other factors of a
    product multiply, the pieces of a concatenation do not."""
    d = atoms.definition(atom)
    if d is None:
        yield atoms.find(atom), times
        return
    sizes = [atoms.size(c) for c in d.children]
    for i, child in enumerate(d.children):
        others = math.prod(sizes[:i] + sizes[i + 1 :]) if d.kind == PROD else 1
        yield from _occurrences(atoms, child, times * max(others, 1))


def min_kept(size: int, max_ratio: float) -> int:
    """The fewest channels a group of `size` keeps when it may lose `max_ratio` (at least 1)."""
    return max(1, size - int(math.floor(max_ratio * size)))


def top_indices(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the `keep` highest scores, in increasing index order (ties: lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def local_plan(
    groups: list[Group],
    scores: dict[str, torch.Tensor],
    ratios: dict[str, float],
    steps: dict[str, int],
    ties: Sequence[list[str]] = (),
) -> list[PlanGroup]:
    """Each group keeps its highest-scoring channels after removing `ratios[key]`, a multiple
    of `steps[key]` (see `rounding`); the groups of a tie (see `tied_groups`) keep their mean
    fraction."""
    counts = {
        g.key: kept_count(g.size, ratios[g.key], steps.get(g.key, 1))
        if ratios.get(g.key, 0.0) > 0
        else g.size
        for g in groups
    }
    sizes = {g.key: g.size for g in groups}
    for tie in ties:
        fraction = sum(counts[k] / sizes[k] for k in tie) / len(tie)
        base = min(tie, key=lambda k: sizes[k])
        kept = kept_count(sizes[base], 1.0 - fraction, steps.get(base, 1))
        set_tied(counts, tie, sizes, kept)
    out = []
    for g in groups:
        keep = counts[g.key]
        indices = top_indices(scores[g.key], keep) if keep < g.size else list(range(g.size))
        out.append(PlanGroup(g.key, g.size, indices, [f"{m.name}:{m.dim}" for m in g.members]))
    return out


def set_tied(counts: dict[str, int], tie: list[str], sizes: dict[str, int], base: int) -> None:
    """The groups of a tie keep the same fraction: the smallest keeps `base` channels, a group
    n times its size keeps n x `base` (tied sizes are multiples of the smallest)."""
    smallest = min(sizes[k] for k in tie)
    for k in tie:
        counts[k] = base * sizes[k] // smallest


def tied_groups(graph: DependencyGraph) -> list[list[str]]:
    """Groups that must keep the same fraction of their channels, because the model's code
    derives one size from another (cached on the graph):

    - the head dims of products sharing their heads, where their sizes are equal: attention
      code sizes q, k and v with one head size (Hugging Face's `attention_head_size`);
    - `nn.MultiheadAttention`: its packed projection needs heads x head dims == embed_dim, the
      width of its input.

    Ties sharing a group are merged.
    """
    if "tied_groups" in graph.cache:
        return graph.cache["tied_groups"]
    ties = _head_size_ties(graph) + _multihead_attention_ties(graph)
    if graph.cache.get("tie_projection_widths"):
        ties += [tie for tie in _projection_width_ties(graph) if len(tie) > 1]
    graph.cache["tied_groups"] = _merged(ties)
    return graph.cache["tied_groups"]


def tie_projection_widths(graph: DependencyGraph, plan: Plan) -> bool:
    """From now on, also tie each head-splitting projection's heads and head dims to its input
    width (`_projection_width_ties`). False when that adds no tie, or would keep whole groups
    that hold over `EAGER_SHARE` of the channels `plan` removes (an input width that cannot be
    pruned freezes its heads; then the exported graph, which keeps the pruning, is the better
    answer; below that share an eager model, which can be fine-tuned, is)."""
    if graph.cache.get("tie_projection_widths") or not _projection_width_ties(graph):
        return False
    if _removed_share(plan, _width_frozen(graph)) > EAGER_SHARE:
        return False
    graph.cache["tie_projection_widths"] = True
    graph.cache.pop("tied_groups", None)
    return True


# the share of a plan's removed channels that may be given up to keep the eager model
EAGER_SHARE = 0.25


def _removed_share(plan: Plan, keys: set[str]) -> float:
    """The fraction of the channels `plan` removes that the groups `keys` hold."""
    removed = {g.key: g.removed for g in plan.pruned_groups}
    total = sum(removed.values())
    return sum(removed.get(k, 0) for k in keys) / total if total else 0.0


def freeze_literal_groups(graph: DependencyGraph, plan: Plan) -> bool:
    """From now on, keep whole the groups whose size the model's code writes as a number
    (`x.view(b, n, 2, 4)`: WavLM's gated relative position bias), so the eager model can run.
    False when that adds nothing, or when those groups hold over `EAGER_SHARE` of the
    channels `plan` removes (then the exported graph, which keeps the pruning, is the better
    answer)."""
    if graph.cache.get("freeze_literals"):
        return False
    frozen = _literal_fixed_groups(graph) & {g.key for g in plan.pruned_groups}
    if not frozen or _removed_share(plan, frozen) > EAGER_SHARE:
        return False
    graph.cache["freeze_literals"] = True
    return True


def literal_frozen(graph: DependencyGraph) -> set[str]:
    """`_literal_fixed_groups`, once `freeze_literal_groups` said so."""
    return _literal_fixed_groups(graph) if graph.cache.get("freeze_literals") else set()


def _literal_fixed_groups(graph: DependencyGraph) -> set[str]:
    """Keys of the groups with channels in a size the code writes as a number (cached)."""
    if "literal_fixed_groups" not in graph.cache:
        atoms = graph.tracer.atoms
        fixed = {leaf for a in literal_sources(graph).fixed for leaf in atoms.leaves(a)}
        graph.cache["literal_fixed_groups"] = {
            g.key for g in graph.groups if fixed & set(atoms.leaves(g.atom))
        }
    return graph.cache["literal_fixed_groups"]


def _projection_width_ties(graph: DependencyGraph) -> list[list[str]]:
    """Code that sizes heads from a projection's input width (`C // num_heads` with C the
    width of x, as Swin does) runs only if heads x head dims keeps the input's fraction: the
    groups of a projection's output that are factors of a product, with its input's group
    (a one-group tie, kept whole, where the input cannot be pruned). Cached on the graph."""
    if "projection_width_ties" in graph.cache:
        return graph.cache["projection_width_ties"]
    atoms = graph.tracer.atoms
    factors = {a for f in atoms.product_factors() if len(f) > 1 for a in f}
    ties = []
    for g in graph.groups:
        if g.atom not in factors:
            continue
        for member in g.members:  # linear projections (their weights are matrices)
            shape = graph.param_shapes.get(member.name, ())
            if member.dim != 0 or not member.name.endswith("weight") or len(shape) != 2:
                continue
            ties.append([g.key, *_groups_holding(graph, member.name, dim=1)])
    graph.cache["projection_width_ties"] = ties
    return ties


def _width_frozen(graph: DependencyGraph) -> set[str]:
    """The head groups whose projection's input is not prunable (one-group width ties)."""
    return {tie[0] for tie in _projection_width_ties(graph) if len(tie) == 1}


def width_frozen(graph: DependencyGraph) -> set[str]:
    """`_width_frozen`, once projection widths are tied (`tie_projection_widths`)."""
    return _width_frozen(graph) if graph.cache.get("tie_projection_widths") else set()


def _groups_holding(graph: DependencyGraph, name: str, dim: int | None = None) -> list[str]:
    """Keys of the groups with a slice of parameter `name` (along `dim`, if given)."""
    return [
        g.key
        for g in graph.groups
        if any(m.name == name and dim in (None, m.dim) for m in g.members)
    ]


def _head_size_ties(graph: DependencyGraph) -> list[list[str]]:
    atoms, by_atom = graph.tracer.atoms, {g.atom: g for g in graph.groups}
    conv_groups = {
        atoms.find(note["groups_atom"])
        for note in graph.tracer.notes.values()
        if "groups_atom" in note
    }
    families: dict[tuple[int, ...], set[int]] = {}
    for f in atoms.product_factors():
        if len(f) > 1 and f[-1] in by_atom and not conv_groups & {atoms.find(a) for a in f[:-1]}:
            families.setdefault(tuple(f[:-1]), set()).add(f[-1])
    ties = []
    for inner in families.values():
        by_size: dict[int, list[str]] = {}
        for atom in sorted(inner):
            by_size.setdefault(by_atom[atom].size, []).append(by_atom[atom].key)
        ties += [keys for keys in by_size.values() if len(keys) > 1]
    return ties


def _multihead_attention_ties(graph: DependencyGraph) -> list[list[str]]:
    ties = []
    for name, module in graph.model.named_modules():
        if not (isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim):
            continue
        weight = f"{name}.in_proj_weight" if name else "in_proj_weight"
        tie = _groups_holding(graph, weight)  # its input (dim 1) and heads/dims (dim 0)
        if len(tie) > 1:
            ties.append(tie)
    return ties


def _merged(ties: list[list[str]]) -> list[list[str]]:
    """Ties sharing a group become one."""
    out: list[set[str]] = []
    for tie in ties:
        joined = set(tie)
        for other in [o for o in out if o & joined]:
            joined |= other
            out.remove(other)
        out.append(joined)
    return [sorted(t) for t in out]


def global_ratios(
    groups: list[Group],
    scores: dict[str, torch.Tensor],
    ratio: float,
    max_ratio: float,
) -> dict[str, float]:
    """Rank channels of all groups together by normalised score; remove the lowest `ratio`.

    Scores are normalised per group by their mean so that groups of different layer sizes and
    scales compare; a group never loses more than `max_ratio` of its channels.
    """
    entries = []
    for g in groups:
        s = scores[g.key].double()
        norm = s / (s.mean() + 1e-12)
        entries.extend((float(v), g.key) for v in norm)
    total = len(entries)
    budget = int(math.floor(ratio * total))
    entries.sort()
    removed: dict[str, int] = {g.key: 0 for g in groups}
    cap = {g.key: g.size - min_kept(g.size, max_ratio) for g in groups}
    n = 0
    for _, key in entries:
        if n >= budget:
            break
        if removed[key] < cap[key]:
            removed[key] += 1
            n += 1
    sizes = {g.key: g.size for g in groups}
    return {k: removed[k] / sizes[k] for k in removed}


def build_plan(
    graph: DependencyGraph,
    scores: dict[str, torch.Tensor],
    ratio: float,
    *,
    scope: str = "local",
    ignore: list[str] | None = None,
    round_to: int | None = None,
    max_ratio: float = 0.95,
    overrides: dict[str, float] | None = None,
    attention: str = "dims",
) -> Plan:
    """Per-group kept indices for a channel removal `ratio` under `scope`."""
    active = active_groups(graph, ignore, attention)
    if scope == "local":
        ratios = {g.key: min(ratio, max_ratio) for g in active}
    elif scope == "global":
        ratios = global_ratios(active, scores, ratio, max_ratio)
    else:
        raise ValueError(f"unknown scope {scope!r}; use 'local' or 'global'")
    ratios.update(override_ratios(graph, overrides, active))
    steps = rounding(graph, round_to)
    groups = local_plan(graph.groups, scores, ratios, steps, active_ties(graph, active))
    return Plan(groups=groups, inputs=list(graph.input_specs))


def active_ties(graph: DependencyGraph, active: list[Group]) -> list[list[str]]:
    """`tied_groups` among groups that may lose channels."""
    sizes = {g.key: g.size for g in active}
    ties = ([k for k in tie if k in sizes] for tie in tied_groups(graph))
    return [
        t for t in ties if len(t) > 1 and not any(sizes[k] % min(sizes[j] for j in t) for k in t)
    ]
