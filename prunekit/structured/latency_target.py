"""Meet a measured latency budget: `target={"latency": f}` keeps a fraction f of the latency.

Latency is not additive per layer the way MACs are, so we search over MACs budgets and measure:
each candidate plan (planned for a MACs fraction m, exactly like `target={"macs": m}`) is applied
to a throwaway copy and timed against the unpruned model, interleaved, on this machine with the
example inputs. The next MACs fraction assumes latency is locally proportional to MACs
(m <- m * f / measured) and the search keeps the candidate closest to the target; it stops once
the measured kept fraction is within `TOLERANCE` of f.

With `scope="auto"` and a latency model, the search runs over the *predicted* latency instead:
each candidate is planned by the automatic allocation with the latency model as its cost, so
per-group savings are milliseconds on this machine (a 9-channel convolution can be slower than
an 8-channel one) rather than MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

from prunekit.graph.capture import at_batch
from prunekit.metrics.latency import compare_latency
from prunekit.structured.plan import Plan
from prunekit.structured.surgery import kept_size

if TYPE_CHECKING:
    from prunekit.graph import DependencyGraph

TOLERANCE = 0.05  # relative, measured (interleaved medians)
MAX_ROUNDS = 6


def plan_for_latency(
    graph: DependencyGraph,
    value: float,
    pruned_copy: Callable[[Plan], nn.Module],
    plan_for_cost: Callable[[str, float], tuple[Plan, dict[str, Any]]],
    *,
    runs: int = 30,
    latency_model: Any = None,
    search: str = "macs",
) -> tuple[Plan, dict[str, Any]]:
    """The plan whose pruned model measures closest to `value` x the dense latency.

    `plan_for_cost("macs", m)` plans a MACs budget (the scope's own way); `pruned_copy(plan)`
    applies a plan to a throwaway copy of the model for timing. With a `latency_model`
    (`pk.metrics.LatencyModel`), the MACs budget is searched on its predictions; the first
    measurement calibrates it (how much of the non-layer time shrinks) and the search is
    repeated on the calibrated predictions, so one or two measurements usually suffice.
    `search="latency"`: `plan_for_cost("latency", p)` plans a predicted latency fraction p
    itself (the automatic allocation costed by the latency model), and p is what is searched."""
    model = graph.model
    inputs, kwargs = graph.export_args, graph.export_kwargs
    batch = _user_batch(graph)  # time the batch the user gave (the trace widened 1 to 2)
    if batch is not None:
        inputs, kwargs = at_batch(inputs, kwargs, batch)
    lm, calibrated = latency_model, False
    planned = (plan_for_cost, pruned_copy)
    on_macs = search == "macs"
    budget = (
        value
        if lm is None or not on_macs
        else _predicted_budget(model, value, *planned, lm.predict)
    )
    tried: list[dict[str, float]] = []
    best: tuple[float, Plan, dict[str, Any]] | None = None
    for _ in range(MAX_ROUNDS):
        plan, info = plan_for_cost(search, budget)
        candidate = pruned_copy(plan)
        timing = compare_latency(model, candidate, inputs, kwargs=kwargs, runs=runs)
        kept = 1.0 / timing["speedup"]
        tried.append({"budget": budget, "macs_kept": _macs_kept(info), "latency_kept": kept})
        if not on_macs:
            tried[-1]["predicted_latency_kept"] = info["predicted_kept"]
        if best is None or abs(kept - value) < abs(best[0] - value):
            best = (kept, plan, info)
        if abs(kept - value) <= TOLERANCE * value:
            break
        if on_macs and lm is not None and not calibrated:  # learn from the first measurement
            lm, calibrated = lm.calibrated(candidate, kept * lm.predict(model)), True
            budget = _predicted_budget(model, value, *planned, lm.predict)
        else:
            budget = min(1.0, max(1e-3, budget * value / kept))
        if any(math.isclose(budget, t["budget"], rel_tol=1e-3) for t in tried):
            break  # the budget no longer moves: rounding or caps bind
    kept, plan, info = best
    return plan, {
        "target": "latency",
        "target_kept": value,
        "measured_kept": kept,
        "macs_kept": _macs_kept(info),
        "planned_on": "predicted latency" if not on_macs else "macs",
        "rounds": tried,
        **({"auto": info["auto"]} if "auto" in info else {}),
    }


def _macs_kept(info: dict[str, Any]) -> float:
    return info.get("macs_kept", info["predicted_kept"])


def latency_cost(graph: DependencyGraph, lm: Any) -> Callable[[dict], float]:
    """The latency model's milliseconds for the model under a keep-mask assignment, read off the
    graph (each timed layer's channel counts are the kept sizes of its weight's dims): no model
    is built."""
    tracer = graph.tracer
    weights = {
        fqn: node for node, (fqn, kind) in tracer.placeholder_target.items() if kind == "parameter"
    }
    missing = [name for name in lm.layers if f"{name}.weight" not in weights]
    if missing:
        raise ValueError(
            f"latency model: the model has no layer {missing[0]!r}; it predicts only "
            "channel-pruned versions of the model it was fitted on"
        )
    dims = {name: tracer.node_dims[weights[f"{name}.weight"]] for name in lm.layers}

    def cost(keep: dict) -> float:
        sizes = {}
        for name, table in lm.layers.items():
            out = kept_size(graph, dims[name][0], keep)  # weights are (out, in, ...)
            depthwise = table.kind == "depthwise"  # (channels, 1, ...)
            sizes[name] = (out if depthwise else kept_size(graph, dims[name][1], keep), out)
        return lm.predict_sizes(sizes)

    return cost


def _predicted_budget(model, value, plan_for_cost, pruned_copy, predict, rounds: int = 12) -> float:
    """The MACs budget whose plan the latency model predicts at `value` x the dense latency."""
    dense = predict(model)
    lo, hi, best = 1e-3, 1.0, (float("inf"), value)
    for _ in range(rounds):
        macs = (lo + hi) / 2
        plan, _info = plan_for_cost("macs", macs)
        kept = predict(pruned_copy(plan)) / dense
        if abs(kept - value) < best[0]:
            best = (abs(kept - value), macs)
        if abs(kept - value) <= TOLERANCE * value / 4:
            break
        lo, hi = (lo, macs) if kept > value else (macs, hi)
    return best[1]


def _user_batch(graph: DependencyGraph) -> int | None:
    shapes = [s["shape"] for s in graph.input_specs if s.get("shape")]
    return shapes[0][0] if shapes else None
