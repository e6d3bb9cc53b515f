"""`sparsity_report`: the fraction of each targeted weight that remains nonzero (Han et al.'s
Table 1 "Weights%")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.unstructured._masks import masks_of
from prunekit.unstructured._targets import find_targets


@dataclass(frozen=True)
class LayerSparsity:
    """One weight: its `name`, `shape`, element count and nonzeros, and whether it is masked."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    masked: bool

    @property
    def remaining(self) -> float:
        """Fraction of entries that are nonzero."""
        return self.nonzeros / self.numel if self.numel else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.remaining


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer and total sparsity of the targeted weights (zeros counted in the dense weights)."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.layers)

    @property
    def remaining(self) -> float:
        return self.nonzeros / self.numel if self.numel else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all targeted weights."""
        return 1.0 - self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [
                {
                    "name": layer.name,
                    "shape": list(layer.shape),
                    "numel": layer.numel,
                    "nonzeros": layer.nonzeros,
                    "remaining": layer.remaining,
                    "masked": layer.masked,
                }
                for layer in self.layers
            ],
            "numel": self.numel,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
        }

    def __str__(self) -> str:
        width = max([len("total"), *(len(layer.name) for layer in self.layers)])
        lines = [f"{'layer':{width}s} {'weights':>10s} {'remaining':>10s}"]
        for layer in self.layers:
            lines.append(f"{layer.name:{width}s} {layer.numel:>10d} {layer.remaining:>10.2%}")
        lines.append(f"{'total':{width}s} {self.numel:>10d} {self.remaining:>10.2%}")
        return "\n".join(lines)


def sparsity_report(model: nn.Module, ignore: Sequence[str] | None = None) -> SparsityReport:
    """Nonzeros of every nn.Linear / nn.Conv weight not in `ignore`, plus any other masked weight.

    >>> import torch
    >>> layer = torch.nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = layer.weight.zero_()
    >>> sparsity_report(layer).sparsity
    1.0
    """
    masks = masks_of(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    names = [t.name for t in find_targets(model, ignore)]
    names += [n for n in masks if n not in names]
    layers = []
    for name in names:
        weight = params.get(name)
        if weight is None:
            continue
        layers.append(
            LayerSparsity(
                name=name,
                shape=tuple(weight.shape),
                numel=weight.numel(),
                nonzeros=int(torch.count_nonzero(weight.detach())),
                masked=name in masks,
            )
        )
    return SparsityReport(layers)
