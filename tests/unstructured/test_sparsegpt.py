"""The SparseGPT solver on single layers: selection, exactness, reconstruction, edge cases."""

from __future__ import annotations

import pytest
import torch

from prunekit.unstructured._patterns import Pattern, nm_keep
from prunekit.unstructured._select import prune_lowest, prune_per_row
from prunekit.unstructured._sparsegpt import HessianAccumulator, sparsegpt_prune


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    acc = HessianAccumulator(x.shape[-1])
    acc.add(x)
    return acc.hessian()


def correlated_inputs(seed: int, tokens: int = 512, features: int = 32) -> torch.Tensor:
    """Correlated features (a rank-8 signal plus noise) of different scales, as activations."""
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(tokens, 8, generator=g) @ torch.randn(8, features, generator=g)
    x = signal + 0.3 * torch.randn(tokens, features, generator=g)
    return x * torch.logspace(-0.5, 0.5, features)[torch.randperm(features, generator=g)]


def error(w: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    """Layer reconstruction error ||W X^T - W' X^T||_F / ||W X^T||_F."""
    ref = w.double() @ x.double().T
    return float((ref - pruned.double() @ x.double().T).norm() / ref.norm())


def test_hessian_is_two_over_n_xtx():
    x = torch.randn(3, 10, 6)
    acc = HessianAccumulator(6)
    acc.add(x[:1])
    acc.add(x[1:])
    flat = x.reshape(-1, 6).double()
    torch.testing.assert_close(acc.hessian(), 2 / 30 * flat.T @ flat)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_identity_hessian_reduces_to_magnitude(nm):
    # Orthonormal inputs: H = 2/N I, no error to propagate, the scores are w^2 * const.
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    x = torch.linalg.qr(torch.randn(64, 32)).Q  # [64, 32], X^T X = I
    new, keep = sparsegpt_prune(w, hessian_of(x), sparsity=0.5, nm=nm, block_size=32)
    if nm is None:
        expected = ~prune_lowest(w.abs(), torch.zeros_like(keep), w.numel() // 2)
    else:
        expected = nm_keep(Pattern("nm", n=2, m=4), w.abs(), torch.zeros_like(keep))
    assert torch.equal(keep, expected)
    torch.testing.assert_close(new.float(), w * keep)  # kept weights unchanged


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_exact_unstructured_sparsity(sparsity):
    torch.manual_seed(1)
    w = torch.randn(12, 40)
    x = correlated_inputs(1, features=40)
    new, keep = sparsegpt_prune(w, hessian_of(x), sparsity=sparsity, block_size=16)
    assert int((~keep).sum()) == round(sparsity * w.numel())
    assert torch.equal(new == 0, ~keep)


def test_nm_groups_and_block_size_invariance():
    # With N:M the mask of each group is chosen at its first column, so the lazy block update
    # must give the same result whatever the block size (it only regroups the arithmetic).
    torch.manual_seed(2)
    w = torch.randn(8, 32)
    h = hessian_of(correlated_inputs(2))
    new4, keep4 = sparsegpt_prune(w, h, nm=(2, 4), block_size=4)
    new32, keep32 = sparsegpt_prune(w, h, nm=(2, 4), block_size=32)
    assert torch.equal(keep4, keep32)
    torch.testing.assert_close(new4, new32)
    assert (keep32.reshape(8, -1, 4).sum(-1) == 2).all()
    assert not torch.allclose(new32.float(), w * keep32)  # the kept weights were updated


def test_lower_reconstruction_error_than_magnitude_and_wanda():
    for seed in range(3):
        torch.manual_seed(seed)
        x = correlated_inputs(seed)
        w = torch.randn(24, 32)
        none = torch.zeros_like(w, dtype=torch.bool)
        magnitude = w * ~prune_lowest(w.abs(), none, w.numel() // 2)
        wanda_scores = w.abs() * x.norm(dim=0)[None, :]
        wanda = w * ~prune_per_row(wanda_scores, none, w.numel() // 2)
        new, _ = sparsegpt_prune(w, hessian_of(x), sparsity=0.5)
        e_sparsegpt, e_wanda, e_mag = error(w, new, x), error(w, wanda, x), error(w, magnitude, x)
        assert e_sparsegpt < 0.8 * e_wanda and e_wanda < e_mag
        # and likewise for 2:4
        pattern = Pattern("nm", n=2, m=4)
        magnitude = w * nm_keep(pattern, w.abs(), none)
        wanda = w * nm_keep(pattern, wanda_scores, none)
        new, _ = sparsegpt_prune(w, hessian_of(x), nm=(2, 4))
        assert error(w, new, x) < min(error(w, wanda, x), error(w, magnitude, x))


def test_forced_entries_stay_pruned_and_count():
    torch.manual_seed(3)
    w = torch.randn(8, 16)
    forced = torch.zeros_like(w, dtype=torch.bool)
    forced[:, 3] = True  # a whole column already pruned
    forced[0, :5] = True
    h = hessian_of(correlated_inputs(3, features=16))
    new, keep = sparsegpt_prune(w, h, sparsity=0.5, forced=forced, block_size=8)
    assert not keep[forced].any() and (new[forced] == 0).all()
    assert int((~keep).sum()) == w.numel() // 2
    new, keep = sparsegpt_prune(w, h, nm=(2, 4), forced=forced, block_size=8)
    assert not keep[forced].any() and (new[forced] == 0).all()
    assert ((~keep).reshape(8, -1, 4).sum(-1) >= 2).all()
    assert int((~keep)[0, :4].sum()) == 4  # a fully pruned group stays fully pruned


def test_dead_inputs_are_zeroed_without_nan():
    torch.manual_seed(4)
    x = correlated_inputs(4, features=16)
    x[:, [2, 9]] = 0  # inputs that never fire
    w = torch.randn(6, 16)
    new, keep = sparsegpt_prune(w, hessian_of(x), sparsity=0.5, block_size=8)
    assert torch.isfinite(new).all()
    assert (new[:, [2, 9]] == 0).all()
    assert int((~keep).sum()) == w.numel() // 2


def test_singular_hessian_without_damping_is_regularised():
    x = torch.randn(3, 8)  # rank 3 < 8 inputs
    w = torch.randn(4, 8)
    new, keep = sparsegpt_prune(w, hessian_of(x), sparsity=0.5, damping=0.0)
    assert torch.isfinite(new).all() and int((~keep).sum()) == 16


def test_indefinite_hessian_says_what_to_do():
    with pytest.raises(ValueError, match="damping="):
        sparsegpt_prune(torch.randn(2, 4), -torch.eye(4), sparsity=0.5)


def test_shape_and_block_size_checks():
    with pytest.raises(ValueError, match="does not match"):
        sparsegpt_prune(torch.randn(2, 4), torch.eye(3), sparsity=0.5)
    with pytest.raises(ValueError, match="multiple of M=4"):
        sparsegpt_prune(torch.randn(2, 8), torch.eye(8), nm=(2, 4), block_size=6)
