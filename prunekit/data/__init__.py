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
from prunekit.data._speech import (
    KeywordSettings,
    keyword_tensors,
    log_mel,
    mel_filterbank,
    read_wav,
    resample,
    synthesize,
)
from prunekit.data._text import (
    FORTUNE_CATEGORIES,
    ByteTokenizer,
    TokenBatches,
    read_records,
    split_records,
    text_loaders,
)

__all__ = [
    "ByteTokenizer",
    "FORTUNE_CATEGORIES",
    "TokenBatches",
    "read_records",
    "split_records",
    "text_loaders",
    "KeywordSettings",
    "keyword_tensors",
    "log_mel",
    "mel_filterbank",
    "read_wav",
    "resample",
    "synthesize",
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
