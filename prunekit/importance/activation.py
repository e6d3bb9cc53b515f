"""Activation criteria: `activation_mean`, `apoz`, `entropy`, `wanda` (need calibration data).

The calibration inputs run through the exported graph (eval mode, the model's current weights);
each group reads its **activation site**: the output of the nonlinearity that follows the
group's producer (``conv -> bn -> relu`` gives the relu output), or the producer's output when no
nonlinearity follows it directly (see `prunekit.importance._activations`). Values at every other
dim (batch, positions, and the other factor of a product space such as the heads of a head-dim
channel) are aggregated into the channel. `wanda` reads the inputs of the group's consumers
instead. A group without a site (none in the test zoo) falls back to its l2 weight norm.
"""

from __future__ import annotations

from typing import Any

import torch

from prunekit.importance._activations import (
    Analysis,
    IndexStats,
    analyse,
    calibration_inputs,
    collect,
    scatter,
)
from prunekit.importance._data import DEFAULT_MAX_BATCHES, take_batches
from prunekit.importance.base import Importance, group_reduce
from prunekit.importance.registry import register


class _ActivationImportance(Importance):
    """Shared plumbing: collect statistics of every group's site, then score per channel."""

    requires_data = True
    pooled = False  # per-sample pooled values needed (entropy)

    def __init__(self, max_batches: int = DEFAULT_MAX_BATCHES) -> None:
        self.max_batches = max_batches
        self.sources: dict[str, str] = {}  # group key -> where its scores came from (last call)

    def _inputs(self, data: Any) -> list[Any]:
        return calibration_inputs(take_batches(data, self.max_batches, self.name), self.name)

    def group_scores(self, graph, groups, data=None, **kw):
        analysis = analyse(graph)
        sites = {g.key: analysis.sites.get(g.key) for g in groups}
        requests = {
            (s.node, s.dim): (s.sample_dim, self.pooled) for s in sites.values() if s is not None
        }
        stats, _ = collect(graph, self._inputs(data), requests)
        out = {}
        self.sources = {}
        for g in groups:
            site = sites[g.key]
            if site is None:
                out[g.key] = _l2_fallback(graph, g)
                self.sources[g.key] = "fallback:l2"
                continue
            out[g.key] = self.score(stats[(site.node, site.dim)], site.index, g.size)
            self.sources[g.key] = f"{site.kind}:{site.node}"
        return out

    def score(self, s: IndexStats, index: torch.Tensor, size: int) -> torch.Tensor:
        raise NotImplementedError


def _l2_fallback(graph, group) -> torch.Tensor:
    return group_reduce(graph, group, "abs^2", lambda w: w.float().abs() ** 2).sqrt()


@register("activation_mean")
class ActivationMean(_ActivationImportance):
    """Mean absolute activation per channel: ``Σ|a| / n`` over the calibration data.

    On a ReLU site this is the mean activation; taking |a| keeps sites without a nonlinearity
    (a producer's raw output) meaningful. In units of the activations; global scope divides by
    the group mean.
    """

    name = "activation_mean"

    def score(self, s, index, size):
        return scatter(s.sum_abs, index, size) / scatter(s.count, index, size).clamp_min(1)


@register("apoz")
class APoZ(_ActivationImportance):
    """``1 − APoZ`` (Hu et al. 2016): the fraction of a channel's activations that are positive.

    APoZ counts zeros after ReLU; we count activations ``<= 0``, which is the same on ReLU sites and
    stays meaningful after GELU/SiLU or on raw producer outputs (the fraction a ReLU would zero).
    In [0, 1]; ties are frequent (channels that are never zero all score 1).
    """

    name = "apoz"

    def score(self, s, index, size):
        counts = scatter(s.count, index, size).clamp_min(1)
        return 1.0 - scatter(s.nonpos, index, size) / counts


@register("entropy")
class Entropy(_ActivationImportance):
    """Luo & Wu 2017: entropy of each channel's globally pooled activation over the data.

    Each calibration sample gives one value per channel: its activation averaged over every dim
    but the batch (spatial positions, tokens, heads of a head-dim channel). The values of a
    channel are binned into `bins` equal-width bins over their own [min, max] range and
    ``H = −Σ p_k ln p_k`` (nats) is the score: a channel that responds the same to every input
    carries no information (H = 0). In [0, ln bins]; needs several samples (the calibration set's
    sample count, not batches) to separate channels.
    """

    name = "entropy"
    pooled = True

    def __init__(self, max_batches: int = DEFAULT_MAX_BATCHES, bins: int = 10) -> None:
        super().__init__(max_batches)
        if bins < 2:
            raise ValueError(f"entropy needs at least 2 bins, got {bins}")
        self.bins = bins

    def score(self, s, index, size):
        pooled = torch.cat(s.pooled)  # [samples, indices]
        counts = scatter(torch.ones(pooled.shape[1], dtype=torch.float64), index, size)
        per_channel = scatter(pooled, index, size) / counts.clamp_min(1)  # [samples, channels]
        return histogram_entropy(per_channel, self.bins)


def histogram_entropy(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Entropy (nats) of each column of `values` [samples, channels], binned over its own range.

    Bin k of a column covers [lo + k·w, lo + (k+1)·w) with w = (hi − lo) / bins, the last bin
    closed; a constant column has entropy 0.
    """
    v = values.double()
    lo, hi = v.min(0).values, v.max(0).values
    width = (hi - lo) / bins
    safe = torch.where(width > 0, width, torch.ones_like(width))
    k = ((v - lo) / safe).floor().clamp_(0, bins - 1).long()
    k = torch.where(width > 0, k, torch.zeros_like(k))
    hist = torch.zeros(bins, v.shape[1], dtype=torch.float64).scatter_add_(0, k, torch.ones_like(v))
    p = hist / v.shape[0]
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(0)


@register("wanda")
class Wanda(_ActivationImportance):
    """Wanda (Sun et al. 2024) for channels: ``Σ_consumers Σ |W_:,i| · ‖X_i‖₂``.

    For each consumer of the group (the next conv/linear/einsum that contracts its channels), the
    magnitude of the weight column of input channel i (summed over outputs and kernel taps) times
    the l2 norm of input feature i over all calibration samples and positions (un-normalised:
    more calibration data scales every group alike). For convolutions ‖X_i‖ is taken over the
    whole feature map, an approximation of the im2col norm. When weight and input index the
    channel differently (grouped convolutions), per channel ``Σ|W|`` and ``sqrt(Σ‖X‖²)`` are
    multiplied. A group without a weight consumer (contracted only against data, as q/k head dims
    in attention) uses its own slices and activation site: ``Σ_slices |w| · ‖a‖₂``.
    """

    name = "wanda"

    def group_scores(self, graph, groups, data=None, **kw):
        analysis: Analysis = analyse(graph)
        requests: dict[tuple[str, int], tuple[int | None, bool]] = {}
        weights: set[str] = set()
        for g in groups:
            cons = analysis.consumers.get(g.key) or []
            for c in cons:
                requests[(c.x, c.x_dim)] = (None, False)
                weights.add(c.weight)
            site = analysis.sites.get(g.key)
            if not cons and site is not None:
                requests[(site.node, site.dim)] = (None, False)
        stats, values = collect(graph, self._inputs(data), requests, weights)
        out = {}
        self.sources = {}
        for g in groups:
            cons = analysis.consumers.get(g.key) or []
            site = analysis.sites.get(g.key)
            if cons:
                total = torch.zeros(g.size, dtype=torch.float64)
                for c in cons:
                    total += _consumer_score(c, stats[(c.x, c.x_dim)], values[c.weight], g.size)
                out[g.key] = total
                self.sources[g.key] = "consumers:" + ",".join(c.node for c in cons)
            elif site is not None:
                norm = scatter(stats[(site.node, site.dim)].sum_sq, site.index, g.size).sqrt()
                l1 = group_reduce(graph, g, "abs^1", lambda w: w.float().abs())
                out[g.key] = l1 * norm
                self.sources[g.key] = f"own:{site.node}"
            else:
                out[g.key] = _l2_fallback(graph, g)
                self.sources[g.key] = "fallback:l2"
        return out


def _consumer_score(c, stats: IndexStats, weight: torch.Tensor, size: int) -> torch.Tensor:
    w = weight.detach().double().abs()
    other = [d for d in range(w.dim()) if d != c.w_dim]
    w_col = (w.sum(dim=other) if other else w).cpu()  # [indices of the weight dim]
    if c.paired and w_col.numel() == stats.size:
        return scatter(w_col * stats.sum_sq.sqrt(), c.w_index, size)
    x_norm = scatter(stats.sum_sq, c.x_index, size).sqrt()
    return scatter(w_col, c.w_index, size) * x_norm
