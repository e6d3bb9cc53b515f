"""Datasets by name (Fashion-MNIST, digits, MNIST-1D, image folders) and fast batch iterables.

>>> import prunekit.data as pkd
>>> train, test = pkd.loaders("digits", batch_size=64)  # doctest: +SKIP
>>> train, test = pkd.loaders("fashion-mnist", batch_size=128)  # doctest: +SKIP
"""

from prunekit.data._batches import DatasetBatches, TensorBatches
from prunekit.data._datasets import (
    DatasetNotFoundError,
    dataset_info,
    fashion_mnist_root,
    list_datasets,
    load,
    loaders,
)
from prunekit.data._idx import read_idx, write_idx_fixture

__all__ = [
    "DatasetBatches",
    "DatasetNotFoundError",
    "TensorBatches",
    "dataset_info",
    "fashion_mnist_root",
    "list_datasets",
    "load",
    "loaders",
    "read_idx",
    "write_idx_fixture",
]
