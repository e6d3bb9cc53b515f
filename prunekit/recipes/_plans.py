"""Plans of models pruned more than once, and a check that a save rebuilds the model it holds.

A save records ONE plan, replayed on the freshly built architecture. A model loaded from a save
that was already pruned and then pruned again therefore needs the two plans composed into one
that maps the ORIGINAL channels to the ones that survive both rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def compose_plans(first: Any, second: Any):
    """The plan equivalent to applying `first` (Plan or dict) and then `second` (Plan or dict).

    Groups are matched by their key (the same parameter and dimension before and after pruning);
    kept indices of `second` index into the channels `first` kept.
    """
    from prunekit.structured import Plan, PlanGroup

    if first is None:
        return second if second is None or isinstance(second, Plan) else Plan.from_dict(second)
    first = first if isinstance(first, Plan) else Plan.from_dict(first)
    if second is None:
        return first
    second = second if isinstance(second, Plan) else Plan.from_dict(second)
    earlier = {g.key: g for g in first.groups}
    groups = []
    for g in second.groups:
        prev = earlier.pop(g.key, None)
        if prev is None:
            groups.append(g)
            continue
        if g.size != len(prev.keep):
            raise ValueError(
                f"cannot compose pruning plans: group {g.key!r} has {g.size} channels in the second "
                f"plan but the first kept {len(prev.keep)}"
            )
        groups.append(
            PlanGroup(g.key, prev.size, [prev.keep[i] for i in g.keep], g.members or prev.members)
        )
    groups.extend(earlier.values())  # groups the second round did not see
    meta = {**first.meta, **second.meta, "rounds": [first.meta, second.meta]}
    return Plan(groups=groups, inputs=first.inputs or second.inputs, kwargs=first.kwargs, meta=meta)


def check_reload(path: Path, model, example_inputs: tuple, *, tolerance: float = 1e-5) -> None:
    """Load the save at `path` and require it to compute what `model` computes (else RuntimeError)."""
    import torch

    import prunekit
    from prunekit.recipes._resolve import eval_mode

    reloaded = eval_mode(prunekit.load(path))
    eval_mode(model)
    with torch.inference_mode():
        want = model(*example_inputs)
        got = reloaded(*example_inputs)
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        return  # structured outputs: load() already checked every tensor's name and shape
    scale = want.abs().max().clamp_min(1e-12)
    error = float((got - want).abs().max() / scale)
    if not error <= tolerance:
        raise RuntimeError(
            f"the saved model does not reproduce the pruned one (relative error {error:.2e}); "
            "nothing was kept. Please report this with the model spec"
        )
