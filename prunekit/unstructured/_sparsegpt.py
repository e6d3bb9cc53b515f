"""SparseGPT (Frantar & Alistarh 2023): prune one linear layer and fix up the weights it keeps.

For a layer ``y = W x`` with calibration inputs ``X`` (``[tokens, in]``), pruning solves the layer-wise
reconstruction problem ``min ||W X^T - W' X^T||`` over sparse ``W'`` approximately with Optimal
Brain Surgeon updates driven by the Hessian ``H = 2/N X^T X`` (``[in, in]``):

- the columns (inputs) are visited left to right; pruning column ``i`` moves its error onto the
  columns to its right, weighted by row ``i`` of the upper Cholesky factor ``U`` of ``H^-1``;
- the mask of every `block_size` columns is chosen when the block starts, from the scores
  ``w^2 / U_ii^2`` of the weights as updated so far (the "adaptive mask selection"), the lowest
  ones over the whole block (unstructured) or the lowest M - N of each group of M inputs (N:M,
  chosen when the group starts);
- within a block the updates are applied column by column, to the rest of the layer once per
  block (the "lazy batch" update), which is the same arithmetic in fewer, larger matmuls.

Inputs that are always zero (``H_ii == 0``) carry no information: their weights are zeroed, which
changes no output on the calibration data. Damping ``λ = damping * mean(diag H)`` keeps the
factorisation stable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MAX_DAMPING_RETRIES = 6


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small LAPACK factorisations and the column loop on one thread: they are too small to
    gain from more, and multi-threaded ``potrf``/``potri`` slow down many times over when other
    processes share the cores (measured: 3 s instead of 0.03 s for a 688 x 688 inverse)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class HessianAccumulator:
    """Running ``X^T X`` of a layer's inputs, accumulated in float64 (``[in, in]``)."""

    def __init__(self, columns: int, device: torch.device | None = None) -> None:
        self.columns = columns
        self.sum = torch.zeros(columns, columns, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs ``[..., in]`` (every leading position is one sample)."""
        rows = x.detach().reshape(-1, self.columns).float()
        self.sum += (rows.T @ rows).double()  # float32 matmul, float64 running sum
        self.count += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        """``H = 2/N X^T X`` (float64)."""
        return self.sum * (2.0 / max(self.count, 1))


def inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor ``U`` of ``(H + λI)^-1`` with ``λ = damping * mean(diag H)``.

    ``H`` must already have its dead inputs set to 1 on the diagonal. If the factorisation fails
    (H numerically indefinite), the damping is raised tenfold, a few times, before giving up.
    Returns ``(U, damping used)``.
    """
    mean_diag = float(hessian.diagonal().mean())
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    level = damping
    for _ in range(MAX_DAMPING_RETRIES):
        with single_thread():
            lower, info = torch.linalg.cholesky_ex(hessian + (level * mean_diag) * eye)
            if int(info) == 0:
                inverse = torch.cholesky_inverse(lower)
                upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
        if int(info) == 0:
            return upper, level
        level = level * 10 if level > 0 else 1e-6
    raise ValueError(
        f"sparsegpt: the input Hessian is not positive definite even with damping={level / 10:g}; "
        "pass a larger damping= (e.g. 0.1) or more calibration data"
    )


def _block_quotas(rows: int, columns: int, sparsity: float, block_size: int) -> list[int]:
    """How many weights each column block prunes so the layer prunes exactly
    ``round(sparsity * rows * columns)`` (cumulative rounding: blocks differ by at most one)."""
    bounds = list(range(0, columns, block_size)) + [columns]
    cumulative = [round(sparsity * rows * b) for b in bounds]
    return [b - a for a, b in zip(cumulative, cumulative[1:])]


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the `k` lowest entries of `scores` (same shape)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[scores.reshape(-1).topk(k, largest=False).indices] = True
    return mask.reshape(scores.shape)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    forced: torch.Tensor | None = None,
    damping: float = 0.01,
    block_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (``[out, in]``) given its input Hessian (``[in, in]``).

    `sparsity`: fraction of zeros in the layer (unstructured; ignored when `nm` is given).
    `nm`: ``(n, m)`` keeps n of every m consecutive inputs of each row. `forced`: bool
    ``[out, in]`` of entries already pruned (they stay pruned and count towards the quota).
    Returns ``(new weight, keep mask)``: the updated weight in float64 (zero where pruned) and a
    bool mask, True where kept. Nothing is modified in place.
    """
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(
            f"hessian shape {list(hessian.shape)} does not match the weight's {columns} inputs"
        )
    if nm is not None and block_size % nm[1]:
        raise ValueError(
            f"block_size={block_size} must be a multiple of M={nm[1]} for an N:M pattern"
        )
    w = weight.detach().to(torch.float64).clone()
    h = hessian.detach().to(device=w.device, dtype=torch.float64).clone()
    forced = torch.zeros_like(w, dtype=torch.bool) if forced is None else forced.to(w.device).bool()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    upper, _ = inverse_hessian_factor(h, damping)

    pruned = torch.zeros_like(w, dtype=torch.bool)
    quotas = _block_quotas(rows, columns, sparsity, block_size)
    done = 0  # weights pruned so far, to keep the layer total exact
    target = 0
    for start, quota in zip(range(0, columns, block_size), quotas):
        end = min(start + block_size, columns)
        w1 = w[:, start:end].clone()
        u1 = upper[start:end, start:end]
        d1 = u1.diagonal()
        forced1 = forced[:, start:end]
        err1 = torch.zeros_like(w1)
        if nm is None:
            target += quota
            k = min(max(target - done, int(forced1.sum())), w1.numel())
            scores = (w1**2 / d1**2).masked_fill(forced1, -torch.inf)
            mask1 = _lowest(scores, k)
            done += k
        else:
            mask1 = forced1.clone()
        with single_thread():
            _prune_columns(w1, u1, mask1, forced1, err1, nm)
        w[:, start:end] = w1
        w[:, end:] -= err1 @ upper[start:end, end:]  # lazy update of the later blocks
        pruned[:, start:end] = mask1
    return w.masked_fill(pruned, 0.0), ~pruned


def _prune_columns(
    w1: torch.Tensor,
    u1: torch.Tensor,
    mask1: torch.Tensor,
    forced1: torch.Tensor,
    err1: torch.Tensor,
    nm: tuple[int, int] | None,
) -> None:
    """OBS column by column within one block (all in place): prune the masked weights of each
    column, spread their error over the block's later columns, and record it in `err1`.
    With `nm`, the mask of each group of M columns is chosen when the group starts."""
    d1 = u1.diagonal()
    for i in range(w1.shape[1]):
        if nm is not None and i % nm[1] == 0:
            group = slice(i, i + nm[1])
            scores = (w1[:, group] ** 2 / d1[group] ** 2).masked_fill(forced1[:, group], -torch.inf)
            drop = scores.topk(nm[1] - nm[0], dim=1, largest=False).indices
            mask1[:, group] |= torch.zeros_like(scores, dtype=torch.bool).scatter_(1, drop, True)
        col = w1[:, i]
        kept = col.masked_fill(mask1[:, i], 0.0)
        err = (col - kept) / u1[i, i]  # OBS: the pruned weights' error, scaled
        w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
        w1[:, i] = kept  # exact zeros (the update leaves rounding noise)
        err1[:, i] = err
