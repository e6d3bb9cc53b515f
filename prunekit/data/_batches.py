"""Fast, deterministic batch iterables over in-memory tensors (and a fallback for big datasets).

Both classes yield ``(inputs, targets)`` tuples in an order that depends only on
``(seed, epoch)``, can start mid-epoch (``iter_from``) so that a resumed run sees exactly the
batches it had not seen yet, and can be sharded for data-parallel training.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class _SeededOrder:
    """Shared logic: per-epoch permutation, sharding and batch index ranges."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        rank: int,
        world_size: int,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} of {world_size}")
        self.n = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of this epoch (call before iterating, as with DistributedSampler)."""
        self.epoch = int(epoch)

    @property
    def shard_size(self) -> int:
        # Every rank gets the same number of examples (the tail that does not divide is dropped)
        # so that all ranks run the same number of steps.
        return self.n // self.world_size if self.world_size > 1 else self.n

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return -(-self.shard_size // self.batch_size)

    def indices(self) -> torch.Tensor:
        """The example indices of this rank for the current epoch, in visiting order."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            order = order[self.rank : self.shard_size * self.world_size : self.world_size]
        return order

    def _batch_ranges(self, start: int) -> Iterator[tuple[int, int]]:
        for b in range(start, len(self)):
            yield b * self.batch_size, min((b + 1) * self.batch_size, self.shard_size)

    def _batch_indices(self, start: int) -> Iterator[slice | torch.Tensor]:
        """What to index the data with, per batch of the epoch from batch ``start`` on: a slice
        in stored order (a view, no copy), else this epoch's (and rank's) indices."""
        order = self.indices()
        sequential = not self.shuffle and self.world_size == 1
        for lo, hi in self._batch_ranges(start):
            yield slice(lo, hi) if sequential else order[lo:hi]


class TensorBatches(_SeededOrder):
    """Batches of in-memory tensors, sliced with a seeded permutation per epoch.

    Much faster than a per-item ``DataLoader`` for datasets that fit in memory.

    >>> x, y = torch.randn(10, 3), torch.arange(10)
    >>> batches = TensorBatches(x, y, batch_size=4, shuffle=True, seed=0)
    >>> len(batches), len(batches.dataset)
    (3, 10)
    >>> batches.set_epoch(1)
    >>> [tuple(xb.shape) for xb, yb in batches]
    [(4, 3), (4, 3), (2, 3)]
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(
                f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length"
            )
        super().__init__(
            len(inputs),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.inputs = inputs
        self.targets = targets
        self.dataset = TensorDataset(inputs, targets)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch starting at batch index ``batch`` (for mid-epoch resume)."""
        for idx in self._batch_indices(batch):
            yield self.inputs[idx], self.targets[idx]

    def sharded(self, rank: int, world_size: int) -> TensorBatches:
        """The same batches split across ``world_size`` data-parallel ranks (same seed on all)."""
        return TensorBatches(
            self.inputs,
            self.targets,
            self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            rank=rank,
            world_size=world_size,
        )

    def __repr__(self) -> str:
        return (
            f"TensorBatches(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, rank={self.rank}/{self.world_size})"
        )


class DatasetBatches(_SeededOrder):
    """The same contract as :class:`TensorBatches` for a map-style dataset too big for memory.

    Items are loaded by a ``DataLoader`` (optionally with worker processes) in the seeded order.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.dataset = dataset
        self.num_workers = num_workers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().tolist()
        batches = [order[lo:hi] for lo, hi in self._batch_ranges(batch)]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers)
        yield from (tuple(batch) for batch in loader)  # collate may give lists

    def sharded(self, rank: int, world_size: int) -> DatasetBatches:
        return DatasetBatches(
            self.dataset,
            self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
        )

    def __repr__(self) -> str:
        return (
            f"DatasetBatches(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, rank={self.rank}/{self.world_size})"
        )
