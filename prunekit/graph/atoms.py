"""Channel-space algebra: atoms joined by union-find, refined into products and concatenations.

Every dimension of every tensor in the traced graph is described by one *atom*: an index space of
a fixed size. Ops couple spaces by `union` (same indices), and describe structure by definitions:

- ``prod(a, b)``: a row-major product, e.g. hidden = heads x head_dim, or conv channels =
  groups x channels-per-group. Removing index i of ``a`` removes the whole row (a head); removing
  index j of ``b`` removes the same column in every row (the same head dim in every head).
- ``cat(a, b)``: a concatenation, e.g. the output of ``torch.cat`` or the slices of a ``split``.

Unions between structured atoms refine both sides to a common structure (8x8 with 4x16 becomes
4x2x8). Where no common structure exists the atom is *blocked*: blocked and model-I/O atoms, and
every atom under them, are never pruned. Leaves of the final structure are the prunable units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PROD = "prod"
CAT = "cat"


class StructureConflict(Exception):
    """Two spaces were coupled whose sizes or structures cannot agree."""


@dataclass
class _Definition:
    kind: str  # PROD or CAT
    children: list[int]


class AtomTable:
    """Union-find over channel spaces, with product / concatenation definitions."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._size: list[int] = []
        self._defn: list[_Definition | None] = []
        self._flags: list[set[str]] = []  # "blocked:<why>", "io"
        self._depth = 0

    # ------------------------------------------------------------------ basics
    def new(self, size: int) -> int:
        atom = len(self._parent)
        self._parent.append(atom)
        self._size.append(int(size))
        self._defn.append(None)
        self._flags.append(set())
        return atom

    def find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:  # path compression
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def size(self, atom: int) -> int:
        return self._size[self.find(atom)]

    def definition(self, atom: int) -> _Definition | None:
        return self._defn[self.find(atom)]

    def flag(self, atom: int, flag: str) -> None:
        self._flags[self.find(atom)].add(flag)

    def flags(self, atom: int) -> set[str]:
        return self._flags[self.find(atom)]

    def block(self, atom: int, reason: str) -> None:
        self.flag(atom, f"blocked:{reason}")

    # ------------------------------------------------------------ constructors
    def prod(self, children: list[int]) -> int:
        """An atom that is the row-major product of `children` (size-1 factors dropped)."""
        kept = [c for c in children if self.size(c) != 1]
        if not kept:
            return self.new(1)
        if len(kept) == 1:
            return kept[0]
        atom = self.new(math.prod(self.size(c) for c in kept))
        self._defn[atom] = _Definition(PROD, self._flatten(PROD, kept))
        return atom

    def cat(self, children: list[int]) -> int:
        """An atom that is the concatenation of `children` (empty pieces dropped)."""
        kept = [c for c in children if self.size(c) != 0]
        if len(kept) == 1:
            return kept[0]
        atom = self.new(sum(self.size(c) for c in kept))
        self._defn[atom] = _Definition(CAT, self._flatten(CAT, kept))
        return atom

    def _flatten(self, kind: str, children: list[int]) -> list[int]:
        out: list[int] = []
        for child in children:
            d = self.definition(child)
            if d is not None and d.kind == kind:
                out.extend(d.children)
            else:
                out.append(child)
        return out

    def split_prod(self, atom: int, sizes: list[int]) -> list[int]:
        """Refine `atom` into a product of factors of the given sizes; returns the factors."""
        if math.prod(sizes) != self.size(atom):
            raise StructureConflict(f"cannot split {self.size(atom)} into {sizes}")
        factors = [self.new(s) for s in sizes]
        whole = self.prod(factors)
        self.union(atom, whole)
        return factors

    def split_cat(self, atom: int, sizes: list[int]) -> list[int]:
        """Refine `atom` into consecutive pieces of the given sizes; returns the pieces."""
        if sum(sizes) != self.size(atom):
            raise StructureConflict(f"cannot cut {self.size(atom)} into {sizes}")
        pieces = [self.new(s) for s in sizes]
        self.union(atom, self.cat(pieces))
        return pieces

    # ------------------------------------------------------------------- union
    def union(self, a: int, b: int) -> None:
        """Declare that spaces `a` and `b` are the same indices (raises StructureConflict)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._size[ra] != self._size[rb]:
            raise StructureConflict(f"size {self._size[ra]} coupled with {self._size[rb]}")
        self._depth += 1
        try:
            if self._depth > 200:
                raise StructureConflict("structure too deep (cyclic coupling)")
            self._merge(ra, rb)
        finally:
            self._depth -= 1

    def _merge(self, ra: int, rb: int) -> None:
        da, db = self._defn[ra], self._defn[rb]
        self._parent[rb] = ra
        self._flags[ra] |= self._flags[rb]
        if db is None:
            return
        if da is None:
            self._defn[ra] = db
            return
        if da.kind != db.kind:
            prod_def, cat_def = (da, db) if da.kind == PROD else (db, da)
            self._defn[ra] = prod_def
            self._cat_as_rows(prod_def, cat_def)
            return
        ca, cb = self._refine(da, db)
        self._defn[ra] = _Definition(da.kind, ca)
        for x, y in zip(ca, cb):
            self.union(x, y)

    def _cat_as_rows(self, prod_def: _Definition, cat_def: _Definition) -> None:
        """A concat seen as a product (e.g. channel shuffle after torch.cat): each row of the
        product's leading factor is one run of concat pieces, so all runs are the same space.

        The leading factor (which row) is blocked: removing a row would remove a whole piece.
        """
        lead, rest = prod_def.children[0], prod_def.children[1:]
        rows = self.size(lead)
        row = self.prod(rest) if len(rest) > 1 else rest[0]
        self.block(lead, "rows of a concatenation")
        pieces, runs = self._refine(cat_def, _Definition(CAT, [row] * rows))
        for x, y in zip(pieces, runs):
            self.union(x, y)

    def _refine(self, da: _Definition, db: _Definition) -> tuple[list[int], list[int]]:
        """Common refinement of two definitions of the same kind (children pairwise equal)."""
        qa, qb = list(da.children), list(db.children)
        out_a: list[int] = []
        out_b: list[int] = []
        split = self.split_prod if da.kind == PROD else self.split_cat
        while qa and qb:
            x, y = qa.pop(0), qb.pop(0)
            sx, sy = self.size(x), self.size(y)
            if sx == sy:
                out_a.append(x)
                out_b.append(y)
                continue
            small, big = (sx, sy) if sx < sy else (sy, sx)
            if da.kind == PROD and big % small:
                raise StructureConflict(f"products {sx} and {sy} share no factorisation")
            rest = big // small if da.kind == PROD else big - small
            if sx > sy:
                head, tail = split(x, [small, rest])
                out_a.append(head)
                out_b.append(y)
                qa.insert(0, tail)
            else:
                head, tail = split(y, [small, rest])
                out_a.append(x)
                out_b.append(head)
                qb.insert(0, tail)
        if qa or qb:
            raise StructureConflict("definitions of different lengths")
        return out_a, out_b

    # --------------------------------------------------------------- structure
    def children(self, atom: int) -> list[int]:
        d = self.definition(atom)
        return [] if d is None else list(d.children)

    def leaves(self, atom: int) -> list[int]:
        """Leaf roots under `atom`, in index order (an atom may appear more than once)."""
        d = self.definition(atom)
        if d is None:
            return [self.find(atom)]
        out: list[int] = []
        for c in d.children:
            out.extend(self.leaves(c))
        return out

    def leaf_flags(self, atoms: list[int]) -> dict[int, set[str]]:
        """Flags of every leaf under `atoms`, inheriting the flags of all its ancestors."""
        result: dict[int, set[str]] = {}

        def walk(atom: int, inherited: frozenset[str]) -> None:
            root = self.find(atom)
            flags = inherited | self._flags[root]
            d = self._defn[root]
            if d is None:
                result.setdefault(root, set()).update(flags)
                return
            for c in d.children:
                walk(c, frozenset(flags))

        for a in atoms:
            walk(a, frozenset())
        return result

    def product_factors(self) -> list[list[int]]:
        """For every product structure, its factors in order with nested products flattened
        (heads before head dims); a factor that is itself a concatenation is its root atom
        (not a leaf: `leaves` gives what it is made of)."""
        roots = [a for a in range(len(self._parent)) if self._parent[a] == a]

        def flat(atom: int) -> list[int]:
            root = self.find(atom)
            d = self._defn[root]
            if d is None:
                return [root]
            if d.kind == PROD:
                return [leaf for c in d.children for leaf in flat(c)]
            return [root]

        return [flat(a) for a in roots if self._defn[a] is not None and self._defn[a].kind == PROD]

    def keep_mask(self, atom: int, keep: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """Boolean mask over `atom`'s indices given kept masks of leaves; None = keep all."""
        root = self.find(atom)
        d = self._defn[root]
        if d is None:
            return keep.get(root)
        masks = [self.keep_mask(c, keep) for c in d.children]
        if all(m is None for m in masks):
            return None
        full = [
            m if m is not None else torch.ones(self.size(c), dtype=torch.bool)
            for m, c in zip(masks, d.children)
        ]
        if d.kind == CAT:
            return torch.cat(full)
        out = full[0]
        for m in full[1:]:
            out = (out[:, None] & m[None, :]).reshape(-1)
        return out

    def index_map(self, atom: int, leaf: int) -> torch.Tensor:
        """For each index of `atom`, the index of `leaf` it belongs to, or -1 if none."""
        root, leaf = self.find(atom), self.find(leaf)
        if root == leaf:
            return torch.arange(self._size[root])
        d = self._defn[root]
        if d is None:
            return torch.full((self._size[root],), -1, dtype=torch.long)
        maps = [self.index_map(c, leaf) for c in d.children]
        if d.kind == CAT:
            return torch.cat(maps)
        out = torch.full((1,), -1, dtype=torch.long)
        for m in maps:
            # row-major combination: whichever factor holds the leaf gives the index
            out = torch.maximum(out[:, None], m[None, :]).reshape(-1)
        return out
