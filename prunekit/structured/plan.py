"""A pruning plan: plain, versioned, JSON-serialisable data (group key -> kept channel indices)."""

from __future__ import annotations

import json
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PLAN_VERSION = 1


@dataclass
class PlanGroup:
    """One group of coupled channels: its stable key, original size and the indices kept."""

    key: str
    size: int
    keep: list[int]
    members: list[str] = field(default_factory=list)  # "param_name:dim" for humans

    @property
    def removed(self) -> int:
        return self.size - len(self.keep)


@dataclass
class Plan:
    """Which channels of which group survive. Replayable with `prunekit.apply(model, plan)`.

    `inputs` records the example input specs (shape, dtype) so a freshly built model can be
    re-traced to find the same groups again.
    """

    groups: list[PlanGroup] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict) or "groups" not in data:
            raise ValueError("not a prunekit plan: expected a JSON object with a 'groups' list")
        version = int(data.get("version", 0))
        if version > PLAN_VERSION:
            raise ValueError(
                f"plan version {version} is newer than this prunekit understands "
                f"({PLAN_VERSION}); upgrade prunekit"
            )
        groups = [PlanGroup(**g) for g in data["groups"]]
        return cls(
            groups=groups,
            inputs=list(data.get("inputs", [])),
            kwargs=dict(data.get("kwargs", {})),
            meta=dict(data.get("meta", {})),
            version=version,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())

    @property
    def pruned_groups(self) -> list[PlanGroup]:
        return [g for g in self.groups if g.removed]

    def then(self, later: Plan | dict[str, Any]) -> Plan:
        """The one plan of applying this plan and then `later` (two prunes with fine-tuning in
        between): replayed on a freshly built model it gives the sizes of both rounds.

        >>> both = first.plan.then(second.plan)  # doctest: +SKIP
        """
        return compose_plans(self, later)  # type: ignore[return-value]


# Per model object, the plans applied to it in this process (composed) and the latest one: a
# save given the latest plan of a model pruned twice records both rounds, else a freshly built
# model could not be brought to its sizes. Weak: throwaway copies take their entries with them.
_APPLIED: weakref.WeakKeyDictionary[Any, tuple[Plan, Plan]] = weakref.WeakKeyDictionary()


def record_applied(model: Any, plan: Plan) -> None:
    """Note that `plan` was applied to `model` (after whatever was applied to it before)."""
    try:
        composed = _APPLIED[model][0] if model in _APPLIED else None
        _APPLIED[model] = (compose_plans(composed, plan), plan)  # type: ignore[assignment]
    except (TypeError, ValueError):  # not weak-referenceable, or plans that do not chain
        _APPLIED.pop(model, None)


def plan_to_save(model: Any, plan: Any) -> Any:
    """The plan that rebuilds `model` from its architecture: `plan` as given, except that the
    latest plan applied to a model pruned more than once (or none at all) stands for all of
    them."""
    composed, latest = _APPLIED.get(model, (None, None))
    if composed is None:
        return plan
    if plan is None:
        return composed
    given = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    if given is latest or given.to_dict() == latest.to_dict():
        return composed
    return plan


def compose_plans(first: Any, second: Any) -> Plan | None:
    """The plan equivalent to applying `first` (Plan or dict) and then `second` (Plan or dict).

    Groups are matched by their key (the same parameter and dimension before and after pruning);
    kept indices of `second` index into the channels `first` kept.
    """
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
