"""`pk.prune`, `pk.plan`, `pk.apply`: structured pruning with physical removal and proof."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit import importance as importance_registry
from prunekit._checks import check_model
from prunekit._copy import deep_copy
from prunekit.graph import DependencyGraph, trace
from prunekit.graph.graph import inputs_from_specs
from prunekit.metrics.latency_model import LatencyModel
from prunekit.structured.accuracy_target import plan_for_accuracy
from prunekit.structured.auto import plan_auto
from prunekit.structured.fallback import prune_exported
from prunekit.structured.latency_target import latency_cost, plan_for_latency
from prunekit.structured.plan import Plan, compose_plans, record_applied
from prunekit.structured.planner import (
    build_plan,
    check_overrides,
    freeze_literal_groups,
    rounding,
    tie_projection_widths,
)
from prunekit.structured.reached import (
    UnmetTargetWarning,
    check_reached,
    check_steps_reached,
    why_no_further,
)
from prunekit.structured.surgery import apply_keep, keep_masks, restore, snapshot
from prunekit.structured.targets import plan_for_target
from prunekit.structured.temperature import (
    apply_folds,
    find_folds,
    fold_modes,
    rescale_attributes,
    select_folds,
)
from prunekit.structured.verify import TOLERANCE, verify_candidate

TARGET_KEYS = ("macs", "params", "latency", "accuracy_drop")


class VerificationError(RuntimeError):
    """The pruned model did not compute the original function with the channels removed."""


@dataclass
class PruneResult:
    """What `prune` did: the model (pruned in place), the plan, and the proof."""

    model: nn.Module
    plan: Plan
    verified: bool | None
    max_error: float | None
    report: dict[str, Any] = field(default_factory=dict)


def _check_ratio(ratio: float) -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool):
        raise TypeError(f"ratio must be a number in [0, 1), not {type(ratio).__name__}")
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be in [0, 1) (fraction of channels removed), got {ratio}")
    return float(ratio)


def _check_target(target: dict[str, float]) -> tuple[str, float]:
    if not isinstance(target, dict) or len(target) != 1:
        raise ValueError('target must be a one-entry dict such as {"macs": 0.5} (fraction kept)')
    ((key, value),) = target.items()
    if key not in TARGET_KEYS:
        raise ValueError(f"unknown target {key!r}; supported: {', '.join(TARGET_KEYS)}")
    if key == "accuracy_drop":
        if not 0.0 <= float(value) < 100.0:
            raise ValueError(
                f"target accuracy_drop is in percentage points (e.g. 0.5), got {value}"
            )
        return key, float(value)
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"target {key} must be in (0, 1] (fraction of the cost kept), got {value}")
    return key, float(value)


def _scores(graph: DependencyGraph, importance: Any, data: Any) -> dict[str, torch.Tensor]:
    crit = importance_registry.get(importance)
    return crit.scores(graph, graph.groups, data=data)


def plan(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float | None = None,
    target: dict[str, float] | None = None,
    importance: Any = "l2",
    scope: str = "local",
    data: Any = None,
    ignore: list[str] | None = None,
    round_to: int | None = None,
    max_ratio: float = 0.95,
    overrides: dict[str, float] | None = None,
    attention: str = "dims",
    example_kwargs: dict | None = None,
    graph: DependencyGraph | None = None,
    eval_data: Any = None,
    latency_model: Any = None,
    auto_recalibrate: bool = False,
) -> Plan:
    """Dry run of `prune`: which channels each group keeps. Nothing is changed.

    >>> p = pk.plan(model, torch.randn(1, 3, 224, 224), ratio=0.5)  # doctest: +SKIP
    >>> p.save("plan.json")  # doctest: +SKIP
    """
    if (ratio is None) == (target is None):
        raise ValueError("pass exactly one of ratio= (fraction removed) or target= (fraction kept)")
    if ratio is not None:
        ratio = _check_ratio(ratio)
    if scope not in ("local", "global", "auto"):
        raise ValueError(f"unknown scope {scope!r}; use 'local', 'global' or 'auto'")
    if scope == "auto" and target is None:
        raise ValueError(
            "scope='auto' chooses per-group ratios for a budget: pass target= "
            "(e.g. target={'macs': 0.5}) instead of ratio="
        )
    if scope == "auto" and data is None:
        raise ValueError(
            "scope='auto' measures each group's sensitivity, so it needs data=: a few "
            "(inputs, targets) calibration batches"
        )
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    importance_registry.get(importance)  # fail fast on unknown names, before tracing
    graph = graph or trace(model, example_inputs, example_kwargs)
    scores = _scores(graph, importance, data)
    kwargs = dict(
        scope=scope,
        ignore=ignore,
        round_to=round_to,
        max_ratio=max_ratio,
        overrides=overrides,
        attention=attention,
    )
    if target is not None:
        key, value = _check_target(target)

        lm = latency_model
        if key == "latency" and scope == "auto" and lm is None:
            lm = _fit_latency_model(model, example_inputs, example_kwargs)
        on_latency = key == "latency" and scope == "auto" and lm is not None
        milliseconds = latency_cost(graph, lm) if on_latency else None

        def for_cost(cost: str, kept: float) -> tuple[Plan, dict[str, Any]]:
            if scope == "auto":
                predicted = milliseconds if cost == "latency" else None
                return plan_auto(
                    model,
                    graph,
                    scores,
                    cost,
                    kept,
                    kwargs,
                    data,
                    cost=predicted,
                    recalibrate=auto_recalibrate,
                )
            return plan_for_target(graph, scores, cost, kept, kwargs)

        if key == "latency":
            result, info = plan_for_latency(
                graph,
                value,
                lambda p: _pruned_copy(model, graph, p),
                for_cost,
                latency_model=lm,
                search="latency" if on_latency else "macs",
            )
        elif key == "accuracy_drop":
            if data is None:
                raise ValueError(
                    "target accuracy_drop measures accuracy: pass data= (calibration batches, "
                    "also used for evaluation unless eval_data= is given)"
                )
            evaluation = eval_data if eval_data is not None else data
            result, info = plan_for_accuracy(
                model, value, for_cost, lambda p: _pruned_copy(model, graph, p), data, evaluation
            )
        else:
            result, info = for_cost(key, value)
        check_reached(info, graph, result, kwargs)
        result.meta["target"] = info
    else:
        result = build_plan(graph, scores, ratio, **kwargs)
        if ratio > 0 and not result.pruned_groups:
            warnings.warn(f"nothing was pruned: {why_no_further(graph, max_ratio)}", stacklevel=3)
    _warn_unrounded(result, rounding(graph, round_to), round_to)
    result.kwargs = {k: v for k, v in (example_kwargs or {}).items() if _jsonable(v)}
    result.meta.update(
        {
            "importance": importance if isinstance(importance, str) else type(importance).__name__,
            "scope": scope,
            "attention": attention,
            "ratio": ratio,
            "round_to": round_to,
        }
    )
    return result


def _warn_unrounded(plan: Plan, steps: dict[str, int], round_to: int | None) -> None:
    """Groups smaller than their rounding step cannot keep a multiple of it: they are pruned
    unrounded."""
    small = [g.key for g in plan.groups if g.size < steps.get(g.key, 1) and g.removed]
    if small:
        warnings.warn(
            f"round_to={round_to}: {len(small)} pruned group(s) have fewer than {round_to} "
            f"channels, so their kept counts are not multiples of it ({', '.join(small[:3])}"
            f"{', ...' if len(small) > 3 else ''}); pass ignore= or overrides= to keep them whole",
            stacklevel=4,
        )


def _fit_latency_model(model: nn.Module, example_inputs: Any, example_kwargs: dict | None):
    """This machine's latency model of `model` at the example inputs' size, for planning a
    latency target with `scope="auto"`; None when the inputs are not plain tensors."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if example_kwargs or not all(isinstance(x, torch.Tensor) for x in inputs):
        return None
    return LatencyModel.fit(model, inputs)


def _pruned_copy(model: nn.Module, graph: DependencyGraph, plan: Plan) -> nn.Module:
    """`plan` applied (unverified) to a deep copy of `model`: for measuring candidates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _apply_verified(deep_copy(model), graph, plan, verify=False).model


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, type(None)))


def apply(
    model: nn.Module,
    plan: Plan,
    example_inputs: Any = None,
    *,
    example_kwargs: dict | None = None,
    verify: bool = False,
    graph: DependencyGraph | None = None,
) -> PruneResult:
    """Replay `plan` on `model` in place (e.g. a freshly built model of the same architecture).

    Example inputs default to zeros of the shapes recorded in the plan.
    """
    result = apply_plan(
        model, plan, example_inputs, example_kwargs=example_kwargs, verify=verify, graph=graph
    )
    if result.model is model:
        record_applied(model, result.plan)
    return result


def apply_plan(
    model: nn.Module,
    plan: Plan | dict,
    example_inputs: Any = None,
    *,
    example_kwargs: dict | None = None,
    verify: bool = False,
    graph: DependencyGraph | None = None,
) -> PruneResult:
    """`apply` without noting the plan on the model (for trial prunes that are undone)."""
    if isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    if example_inputs is None:
        example_inputs = _inputs_from_specs(plan.inputs)
    kwargs = dict(plan.kwargs)
    kwargs.update(example_kwargs or {})
    graph = graph or trace(model, example_inputs, kwargs or None)
    return _apply_verified(model, graph, plan, verify=verify)


def _inputs_from_specs(specs: list[dict[str, Any]]) -> tuple:
    if not specs:
        raise ValueError("this plan records no input shapes; pass example_inputs=")
    return inputs_from_specs(specs)


def _verified_result(model, example_inputs, graph, the_plan, plan_options, verify):
    """(plan, result): the eager model pruned per `the_plan` if it verifies; else the eager
    model planned again, for code that sizes heads from its input width (Swin), with those
    widths tied, and then, where the code writes a few groups' sizes as numbers, with those
    kept whole; else the exported-graph fallback of `the_plan`. The retries come before the
    fallback, whose capture with free sizes can take a minute. Warnings of the attempts that
    are not used are dropped."""
    if not verify:
        return the_plan, _apply_verified(model, graph, the_plan, verify=False)
    first, error, first_caught = _quietly(
        lambda: _apply_verified(model, graph, the_plan, verify=True, fallback=False)
    )
    if first is not None or not isinstance(error, _NoEagerCandidate):
        _replay(first_caught)
        if first is None:
            raise error
        return the_plan, first
    constraints = (
        (tie_projection_widths, "its code sizes heads from the input width, which is not pruned"),
        (freeze_literal_groups, "its code writes their sizes as numbers"),
    )
    for constrain, why in constraints:
        if constrain(graph, the_plan):
            again = _quietly(lambda: plan(model, example_inputs, **plan_options, graph=graph))
            if again[0] is None:
                continue
            result, _, caught = _quietly(
                lambda: _apply_verified(model, graph, again[0], verify=True, fallback=False)  # noqa: B023
            )
            if result is not None:
                _replay([*again[2], *caught])
                _warn_kept_whole(the_plan, again[0], why)
                return again[0], result
    _replay(first_caught)
    return the_plan, _apply_verified(
        model, graph, the_plan, verify=True, eager=False, earlier=error.report
    )


def _warn_kept_whole(first: Plan, final: Plan, why: str) -> None:
    """Say which groups the first plan pruned that the eager model could not lose."""
    kept = {g.key for g in first.pruned_groups} - {g.key for g in final.pruned_groups}
    if kept:
        shown = ", ".join(sorted(kept)[:3]) + (", ..." if len(kept) > 3 else "")
        warnings.warn(
            f"{len(kept)} group(s) kept whole so that the model's Python code runs at the "
            f"pruned sizes ({why}): {shown}; the other groups carry the pruning",
            stacklevel=3,
        )


def _quietly(run):
    """(result or None, the exception or None, the warnings recorded) of `run()`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return run(), None, caught
        except Exception as exc:  # noqa: BLE001 - the caller picks the next candidate
            return None, exc, caught


def _replay(caught) -> None:
    """Warn again what `_quietly` recorded."""
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)


class _NoEagerCandidate(Exception):
    """No eager candidate verified (`_apply_verified(..., fallback=False)`); `report` holds
    their errors, for the fallback tried next."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("no eager candidate verified")
        self.report = report


def _apply_verified(
    model,
    graph,
    plan: Plan,
    *,
    verify: bool,
    seed: int = 0,
    eager: bool = True,
    fallback: bool = True,
    earlier: dict[str, Any] | None = None,
) -> PruneResult:
    """Prune `model` per `plan`; with `verify`, prove it first on a randomised copy.

    Candidates are tried in order: the eager model (with each way of keeping the attention
    temperature; not with `eager=False`), then the exported-graph fallback (not with
    `fallback=False`, which raises `_NoEagerCandidate` instead). The first that verifies is
    applied. `earlier`: the report of a call that tried the eager candidates already.
    """
    keep = keep_masks(graph, plan)
    folds = find_folds(graph, keep)
    modes = [plan.meta["temperature"]] if "temperature" in plan.meta else fold_modes(folds)
    if plan.meta.get("fallback") or not eager:
        modes = []
    report: dict[str, Any] = {"groups": len(graph.groups), "pruned_groups": len(plan.pruned_groups)}
    report.update(earlier or {})
    if not verify:
        return _finish(model, graph, plan, keep, folds, modes[0] if modes else None, report)
    start = time.perf_counter()
    errors: dict[str, float] = dict(report.get("verify_errors", {}))
    chosen = None
    for mode in [*modes, None] if fallback else modes:
        key = mode or "exported-graph"
        errors[key], failure = verify_candidate(
            graph,
            model,
            keep,
            lambda m, mode=mode: _candidate(m, graph, keep, folds, mode),
            seed=seed,
        )
        if failure and mode is not None:
            report.setdefault("eager_failure", failure)
        if errors[key] <= TOLERANCE:
            chosen = mode
            break
    report["verify_seconds"] = report.get("verify_seconds", 0.0) + time.perf_counter() - start
    report["verify_errors"] = errors
    best = min(errors.values(), default=math.inf)
    if best > TOLERANCE and not fallback:
        raise _NoEagerCandidate(report)
    if best > TOLERANCE:
        raise VerificationError(
            f"pruned model differs from the original with those channels removed "
            f"(relative error {best:.3g} > {TOLERANCE}); the model was left unchanged"
        )
    result = _finish(model, graph, plan, keep, folds, chosen, report)
    result.verified, result.max_error = True, best
    return result


def pruned_graph(model: nn.Module, graph: DependencyGraph, plan: Plan) -> nn.Module:
    """`plan` applied to a copy of `model` as the exported-graph fallback (unverified): what the
    pruned model computes even where the model's own code cannot run at the pruned sizes."""
    keep = keep_masks(graph, plan)
    return _candidate(deep_copy(model), graph, keep, find_folds(graph, keep), None)


def _why_not_eager(report: dict[str, Any]) -> str:
    """What went wrong in the eager model, for the fallback warning."""
    if "eager_failure" in report:
        return f" ({report['eager_failure']})"
    eager = [e for k, e in report.get("verify_errors", {}).items() if k != "exported-graph"]
    return f" (it runs, but its outputs differ by {min(eager):.3g})" if eager else ""


def _candidate(model: nn.Module, graph, keep, folds, mode: str | None) -> nn.Module:
    """Prune `model` (a throwaway copy) eagerly with fold `mode`, or as an exported graph."""
    if mode is None:
        apply_folds(model, select_folds(folds, "required"))
        return prune_exported(graph, model, keep)
    _surgery(model, graph, keep, folds, mode)
    return model


def _finish(model, graph, plan, keep, folds, mode, report) -> PruneResult:
    """Apply the chosen candidate to the user's model (restored exactly on failure)."""
    if folds:
        plan.meta["temperature"] = mode or "required"
        report["temperature_folds"] = len(select_folds(folds, mode or "required"))
    if mode is None:
        plan.meta["fallback"] = "exported-graph"
        twin = deep_copy(model)
        apply_folds(twin, select_folds(folds, "required"))
        pruned = prune_exported(graph, twin, keep)
        report["fallback"] = "exported-graph"
        warnings.warn(
            f"the model's Python code cannot run at the pruned sizes{_why_not_eager(report)}; "
            "returning the pruned exported graph (eval mode, for deployment) as result.model",
            stacklevel=3,
        )
        return PruneResult(model=pruned, plan=plan, verified=None, max_error=None, report=report)
    state = snapshot(model)
    try:
        problems = _surgery(model, graph, keep, folds, mode)
    except Exception:
        restore(model, state)
        raise
    for problem in problems:
        warnings.warn(problem, stacklevel=3)
    return PruneResult(model=model, plan=plan, verified=None, max_error=None, report=report)


def _surgery(model: nn.Module, graph, keep, folds, mode: str) -> list[str]:
    """Prune `model` in place; returns warnings for the user (configs that cannot describe it)."""
    chosen = select_folds(folds, mode)
    apply_folds(model, chosen)
    rescale_attributes(model, chosen)  # before apply_keep compares the model with its config
    problems = apply_keep(model, graph, keep)
    _reset_modes(model)
    return problems


def _reset_modes(model: nn.Module) -> None:
    """Set every module's mode again, keeping each as it was: modules that cache tensors derived
    from their parameters clear them in `train()` (timm's attention-bias caches), which the
    verified copy also went through (`eval()`), so stale full-size caches do not survive."""
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        model.train(model.training)
    except NotImplementedError:  # an exported graph's mode is baked in
        return
    for name, module in model.named_modules():
        module.training = modes[name]


def prune(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float | None = None,
    target: dict[str, float] | None = None,
    importance: Any = "l2",
    scope: str = "local",
    data: Any = None,
    ignore: list[str] | None = None,
    round_to: int | None = None,
    max_ratio: float = 0.95,
    overrides: dict[str, float] | None = None,
    attention: str = "dims",
    verify: bool = True,
    example_kwargs: dict | None = None,
    steps: int = 1,
    eval_data: Any = None,
    latency_model: Any = None,
    auto_recalibrate: bool = False,
) -> PruneResult:
    """Structured pruning with physical removal, in place, proven by verification.

    `ratio` is the fraction of channels REMOVED in each group; `target={"macs": f}`,
    `{"params": f}` or `{"latency": f}` (measured here) is the fraction of the cost KEPT;
    `{"accuracy_drop": d}` prunes as far as it can while the accuracy measured on `eval_data`
    (default `data`), after BatchNorm recalibration, stays within d percentage points.
    `scope="auto"` picks per-group ratios from measured sensitivity for any target. A
    `latency_model` (`pk.metrics.LatencyModel.fit(model, x)`) plans latency targets on
    predictions, so usually one measurement confirms the plan; with `scope="auto"` one is fitted
    on the example inputs when none is given, and the allocation weighs each group's predicted
    milliseconds saved (not its MACs) against its sensitivity. `auto_recalibrate=True` measures
    auto's sensitivities after re-measuring BatchNorm statistics (EagleEye): better on the
    Fashion-MNIST ResNet-20, worse on the VGG, so off by default. Output
    channels of modules matched by `ignore` are kept; model inputs and outputs are never pruned.
    Attention loses the same head dims in every head (`attention="dims"`) or whole heads
    (`attention="heads"`), never both. With `steps=N` the budget is reached in N rounds of equal
    geometric size, each re-tracing and re-scoring the model pruned so far; the returned plan
    composes them (with a `ratio`, each round rounds its removal down, so small groups lose a
    little less than `ratio` in total; a `target` is met as a whole). On any failure the model
    is restored exactly and the error raised.

    >>> import torch, torchvision, prunekit as pk
    >>> m = torchvision.models.resnet18()
    >>> r = pk.prune(m, torch.randn(1, 3, 224, 224), ratio=0.5)  # doctest: +SKIP
    >>> r.verified, r.max_error  # doctest: +SKIP
    (True, 3.1e-07)
    """
    check_model(model, "prune")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    check_overrides(overrides)
    if steps > 1 and target is not None and "accuracy_drop" in target:
        raise ValueError("target accuracy_drop searches its own budget: use steps=1")
    if steps > 1:
        options = dict(
            importance=importance,
            scope=scope,
            data=data,
            ignore=ignore,
            round_to=round_to,
            attention=attention,
            verify=verify,
            example_kwargs=example_kwargs,
            auto_recalibrate=auto_recalibrate,
        )
        return _prune_in_steps(
            model, example_inputs, steps, ratio, target, max_ratio, overrides, options
        )
    start = time.perf_counter()
    graph = trace(model, example_inputs, example_kwargs)
    traced = time.perf_counter()
    plan_options = dict(
        ratio=ratio,
        target=target,
        importance=importance,
        scope=scope,
        data=data,
        ignore=ignore,
        round_to=round_to,
        max_ratio=max_ratio,
        overrides=overrides,
        attention=attention,
        example_kwargs=example_kwargs,
        eval_data=eval_data,
        latency_model=latency_model,
        auto_recalibrate=auto_recalibrate,
    )
    the_plan = plan(model, example_inputs, **plan_options, graph=graph)
    planned = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        the_plan, result = _verified_result(
            model, example_inputs, graph, the_plan, plan_options, verify
        )
    told = set()
    for w in caught:  # once each: verification and the final apply may both raise one
        if (str(w.message), w.category) not in told:
            told.add((str(w.message), w.category))
            warnings.warn(w.message, w.category, stacklevel=2)
    result.report.update(
        {
            "trace_seconds": traced - start,
            "plan_seconds": planned - traced,
            "apply_seconds": time.perf_counter()
            - planned
            - result.report.get("verify_seconds", 0.0),
            "blocked_ops": [vars(b) for b in graph.blocked_ops],
            **({"target": the_plan.meta["target"]} if "target" in the_plan.meta else {}),
        }
    )
    if result.model is model:
        record_applied(model, the_plan)
    return result


def _per_step(removed: float, steps: int) -> float:
    """The ratio removed per step so that `steps` of them remove `removed` in total."""
    return 1.0 - (1.0 - removed) ** (1.0 / steps)


def _prune_in_steps(model, example_inputs, steps, ratio, target, max_ratio, overrides, options):
    """`steps` rounds of prune (re-traced, re-scored); budgets split geometrically."""
    if (ratio is None) == (target is None):
        raise ValueError("pass exactly one of ratio= (fraction removed) or target= (fraction kept)")
    if ratio is not None:
        budget: dict[str, Any] = {"ratio": _per_step(_check_ratio(ratio), steps)}
    else:
        key, value = _check_target(target)
        budget = {"target": {key: value ** (1.0 / steps)}}
    data = options["data"]
    if data is not None and iter(data) is data:  # a one-shot iterator: every step needs it
        options["data"] = list(data)
    per_step_overrides = {k: _per_step(v, steps) for k, v in (overrides or {}).items()}
    composed, rounds, errors = None, [], []
    for _ in range(steps):
        with warnings.catch_warnings():  # a step's miss may be made up by the next ones
            warnings.simplefilter("ignore", UnmetTargetWarning)
            result = prune(
                model,
                example_inputs,
                **budget,
                max_ratio=_per_step(max_ratio, steps),
                overrides=per_step_overrides or None,
                **options,
            )
        composed = compose_plans(composed, result.plan)
        rounds.append(result.report)
        errors.append(result.max_error)
        model = result.model
    verified = all(e is not None for e in errors) or None
    max_error = max(errors) if verified else None
    report = {"steps": rounds, "pruned_groups": len(composed.pruned_groups)}
    if target is not None:
        report["target"] = check_steps_reached(key, value, rounds)
    return PruneResult(
        model=model, plan=composed, verified=verified, max_error=max_error, report=report
    )
