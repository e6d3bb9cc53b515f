import pytest
import torch

from prunekit.graph.atoms import AtomTable, StructureConflict


def test_union_of_products_refines_to_common_factors():
    t = AtomTable()
    a, b = t.new(64), t.new(64)
    t.split_prod(a, [8, 8])
    t.split_prod(b, [4, 16])
    t.union(a, b)
    assert [t.size(x) for x in t.leaves(a)] == [4, 2, 8]


def test_union_of_concats_refines_boundaries():
    t = AtomTable()
    a, b = t.new(10), t.new(10)
    t.split_cat(a, [4, 6])
    t.split_cat(b, [7, 3])
    t.union(a, b)
    assert [t.size(x) for x in t.leaves(a)] == [4, 3, 3]


def test_sizes_must_agree():
    t = AtomTable()
    with pytest.raises(StructureConflict):
        t.union(t.new(3), t.new(4))


def test_keep_mask_of_product_removes_rows_or_columns():
    t = AtomTable()
    heads, dims = t.new(2), t.new(3)
    hidden = t.prod([heads, dims])
    # drop head dim 1 in every head
    mask = t.keep_mask(hidden, {t.find(dims): torch.tensor([True, False, True])})
    assert mask.tolist() == [True, False, True, True, False, True]
    # drop head 0
    mask = t.keep_mask(hidden, {t.find(heads): torch.tensor([False, True])})
    assert mask.tolist() == [False, False, False, True, True, True]


def test_index_map_of_concat_and_product():
    t = AtomTable()
    a, b = t.new(2), t.new(3)
    both = t.cat([a, b])
    assert t.index_map(both, b).tolist() == [-1, -1, 0, 1, 2]
    rows = t.prod([a, b])
    assert t.index_map(rows, a).tolist() == [0, 0, 0, 1, 1, 1]


def test_concat_seen_as_product_ties_the_pieces():
    """Channel shuffle after a concat: cat(x, y) viewed as 2 x n makes x and y one space."""
    t = AtomTable()
    x, y = t.new(4), t.new(4)
    joined = t.cat([x, y])
    t.split_prod(joined, [2, 4])
    assert t.find(x) == t.find(y)
    flags = t.leaf_flags([joined])
    assert any(f.startswith("blocked") for f in flags[t.leaves(joined)[0]])


def test_flags_are_inherited_by_leaves():
    t = AtomTable()
    a = t.new(6)
    h, d = t.split_prod(a, [2, 3])
    t.flag(a, "io")
    flags = t.leaf_flags([a])
    assert "io" in flags[t.find(h)] and "io" in flags[t.find(d)]
