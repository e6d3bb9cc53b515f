"""Sparsity patterns: `unstructured`, `N:M` (e.g. "2:4") and blocks (e.g. "block4x4", "block1x8").

Patterns are defined on the weight's matrix view (see `matrix_view`): ``[out, in]`` for a Linear
weight, ``[out, k... * in]`` for a conv weight with the input channels innermost.

- ``N:M``: in every group of M consecutive entries of a row (along the input dimension) at most N
  are nonzero; the N with the highest importance are kept. The sparsity is 1 - N/M.
- ``blockRxC``: R x C tiles of the matrix view are kept or pruned whole, ranked by the mean
  importance of their entries; the scope allocates tiles across layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from prunekit.unstructured._targets import from_matrix, matrix_view


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: ``kind`` is "unstructured", "nm" (n of every m) or "block" (rows x cols)."""

    kind: str
    n: int = 1
    m: int = 1
    rows: int = 1
    cols: int = 1

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block{self.rows}x{self.cols}"
        return "unstructured"

    def fits(self, shape: torch.Size) -> bool:
        """Whether a weight of `shape` can hold the pattern (its matrix view divides evenly)."""
        out, cols = shape[0], int(torch.Size(shape).numel()) // max(shape[0], 1)
        if self.kind == "nm":
            return cols % self.m == 0
        if self.kind == "block":
            return out % self.rows == 0 and cols % self.cols == 0
        return True

    def requirement(self) -> str:
        if self.kind == "nm":
            return f"an input size (in channels x kernel size) divisible by {self.m}"
        return f"{self.rows} | output size and {self.cols} | input size (x kernel size)"


_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block(\d+)x(\d+)$")


def parse_pattern(pattern: str | Pattern) -> Pattern:
    """``"unstructured"``, ``"N:M"`` (1 <= N < M) or ``"blockRxC"`` -> a `Pattern`."""
    if isinstance(pattern, Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string, got {type(pattern).__name__}")
    text = pattern.strip().lower()
    if text == "unstructured":
        return Pattern("unstructured")
    if match := _NM.match(text):
        n, m = int(match[1]), int(match[2])
        if 1 <= n < m:
            return Pattern("nm", n=n, m=m)
    elif match := _BLOCK.match(text):
        rows, cols = int(match[1]), int(match[2])
        if rows >= 1 and cols >= 1 and rows * cols > 1:
            return Pattern("block", rows=rows, cols=cols)
    raise ValueError(
        f"unknown pattern {pattern!r}; use 'unstructured', 'N:M' with 1 <= N < M (e.g. '2:4') "
        "or 'blockRxC' with R*C > 1 (e.g. 'block4x4', 'block1x8')"
    )


def unit_view(pattern: Pattern, values: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Per-unit values ``[unit rows, unit cols]``: the weight's matrix view for unstructured,
    tile means (`reduce="mean"`) or "all" (every entry True) for blocks."""
    matrix = matrix_view(values)
    if pattern.kind != "block":
        return matrix
    r, c = pattern.rows, pattern.cols
    tiles = matrix.reshape(matrix.shape[0] // r, r, matrix.shape[1] // c, c)
    if reduce == "all":
        return tiles.all(3).all(1)
    return tiles.float().mean((1, 3))


def expand_units(pattern: Pattern, keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A unit keep-mask ``[unit rows, unit cols]`` back to a weight-shaped bool mask."""
    if pattern.kind == "block":
        keep = keep.repeat_interleave(pattern.rows, 0).repeat_interleave(pattern.cols, 1)
    return from_matrix(keep, shape)


def nm_keep(pattern: Pattern, scores: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Keep-mask of an N:M pattern: the N best of every M along the input dimension; entries
    already `pruned` stay pruned (their group then holds fewer than N nonzeros)."""
    s = matrix_view(scores).float().masked_fill(matrix_view(pruned), float("-inf"))
    groups = s.reshape(s.shape[0], -1, pattern.m)  # [out, cols / M, M]
    order = groups.sort(dim=-1, stable=True).indices
    drop = torch.zeros_like(groups, dtype=torch.bool)
    drop.scatter_(-1, order[..., : pattern.m - pattern.n], True)
    keep = ~drop.reshape(s.shape) & ~matrix_view(pruned)
    return from_matrix(keep, scores.shape)
