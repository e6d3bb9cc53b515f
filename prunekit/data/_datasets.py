"""Dataset loading by name: Fashion-MNIST, digits, MNIST-1D, spoken keywords, image folders."""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from prunekit.data._batches import DatasetBatches, TensorBatches
from prunekit.data._idx import FILES, read_split

DEFAULT_FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530

# name -> what one example looks like, for pairing datasets with models.
_INFO: dict[str, dict[str, Any]] = {
    "fashion-mnist": {"input_shape": (1, 28, 28), "num_classes": 10},
    "digits": {"input_shape": (1, 8, 8), "num_classes": 10},
    "mnist1d": {"input_shape": (1, 40), "num_classes": 10},
    "imagefolder": {"input_shape": None, "num_classes": None},  # depends on the folder
    "keywords-synth": {"input_shape": (1, 40, 101), "num_classes": 12},  # see _speech.py
}
# Image folders with more bytes than this (as float32 tensors) are streamed, not held in memory.
_IN_MEMORY_LIMIT = 1 << 30


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where prunekit looked; the message says where and how to fix."""


def list_datasets() -> list[str]:
    """Names accepted by :func:`load` and :func:`loaders`."""
    return list(_INFO)


def dataset_info(name: str) -> dict[str, Any]:
    """``{"input_shape": (C, ...), "num_classes": int}`` of one example of a named dataset."""
    return dict(_INFO[_check_name(name)])


def _check_name(name: str) -> str:
    key = name.lower().replace("_", "-")
    key = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "mnist-1d": "mnist1d"}.get(
        key, key
    )
    if key not in _INFO:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_INFO)}")
    return key


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """Where Fashion-MNIST is read from: ``root`` > env ``PRUNEKIT_DATA`` > the Debian path."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PRUNEKIT_DATA")
    return Path(env).expanduser() if env else DEFAULT_FASHION_ROOT


def _find_fashion_files(root: Path) -> Path | None:
    # Also accept torchvision's download layout under the same root.
    for folder in (root, root / "FashionMNIST" / "raw"):
        if all((folder / f).is_file() for pair in FILES.values() for f in pair):
            return folder
    return None


@functools.lru_cache(maxsize=8)
def _fashion_cached(
    folder: str, train: bool, stamp: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    # `stamp` (mtimes and sizes) is part of the key so a rewritten file is read again.
    images, labels = read_split(Path(folder), train)
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(FASHION_MEAN)
    x = x.div_(FASHION_STD).unsqueeze(1)  # [N, 1, 28, 28]
    return x, torch.from_numpy(labels.astype(np.int64))


def _fashion_tensors(
    root: str | Path | None, train: bool, download: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    base = fashion_mnist_root(root)
    if download and root is None and not os.environ.get("PRUNEKIT_DATA"):
        if _find_fashion_files(base) is None:
            base = Path.home() / ".cache" / "prunekit" / "fashion-mnist"
    folder = _find_fashion_files(base)
    if folder is None and download:
        import torchvision

        # Network access only when explicitly asked for; torchvision writes FashionMNIST/raw/.
        for split in (True, False):
            torchvision.datasets.FashionMNIST(str(base), train=split, download=True)
        folder = _find_fashion_files(base)
    if folder is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {base}: install the Debian package dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or set PRUNEKIT_DATA to a folder with the "
            "four *-ubyte.gz files (or pass download=True where a network exists)"
        )
    files = [folder / f for f in FILES[train]]
    stamp = tuple(v for f in files for v in (f.stat().st_mtime_ns, f.stat().st_size))
    return _fashion_cached(str(folder.resolve()), train, stamp)


# --------------------------------------------------------------------------------------------
# scikit-learn digits and MNIST-1D (both generated or bundled: no files needed)


@functools.lru_cache(maxsize=4)
def _digits_split(split_seed: int) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.data.astype(np.float32)).reshape(-1, 1, 8, 8) / 16.0
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(split_seed).permutation(len(y)))
    n_train = int(round(0.8 * len(y)))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(), x[train].std()  # statistics of the training split only
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def _digits_tensors(train: bool, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    xtr, ytr, xte, yte = _digits_split(split_seed)
    return (xtr, ytr) if train else (xte, yte)


@functools.lru_cache(maxsize=1)
def _mnist1d_all() -> tuple[torch.Tensor, ...]:
    from mnist1d.data import make_dataset  # never get_dataset: it downloads

    # make_dataset seeds the global `random` and numpy generators; leave the caller's untouched.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset()
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def as_x(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1)  # [N,1,40]

    def as_y(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]), as_y(data["y_test"])


def _mnist1d_tensors(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    xtr, ytr, xte, yte = _mnist1d_all()
    return (xtr, ytr) if train else (xte, yte)


# --------------------------------------------------------------------------------------------
# Image folders


def _split_folder(root: Path, train: bool) -> Path:
    names = ("train",) if train else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetNotFoundError(
        f"image folder {root} has no {' or '.join(n + '/' for n in names)} subfolder: "
        "expected ROOT/train/<class>/*.png and ROOT/test/<class>/*.png (or ROOT/val/)"
    )


def _imagefolder(root: str | Path | None, train: bool, image_size: Any) -> Dataset:
    from PIL import Image
    from torchvision import datasets, transforms

    if root is None:
        raise ValueError("dataset 'imagefolder' needs root=FOLDER (with train/ and test/ inside)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    # Channels and default size come from the first training image, so both splits agree.
    probe = datasets.ImageFolder(str(_split_folder(root, True)))
    if len(probe) == 0:
        raise DatasetNotFoundError(f"image folder {root / 'train'} holds no images")
    with Image.open(probe.samples[0][0]) as first:
        gray = first.mode in ("1", "L", "I", "I;16", "F")
        size = (first.height, first.width)
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    channels = 1 if gray else 3
    transform = transforms.Compose(
        [
            transforms.Grayscale(1) if gray else transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize(size),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels),  # to [-1, 1]
        ]
    )
    return datasets.ImageFolder(str(_split_folder(root, train)), transform=transform)


# --------------------------------------------------------------------------------------------
# Public entry points


def _tensors(
    name: str, root: Any, train: bool, download: bool, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "fashion-mnist":
        return _fashion_tensors(root, train, download)
    if name == "digits":
        return _digits_tensors(train, split_seed)
    if name == "keywords-synth":
        from prunekit.data._speech import keyword_tensors  # imports this module

        return keyword_tensors(train)
    return _mnist1d_tensors(train)


def load(
    name: str,
    *,
    root: str | Path | None = None,
    train: bool = True,
    download: bool = False,
    image_size: int | tuple[int, int] | None = None,
    split_seed: int = 0,
) -> Dataset:
    """One split of a named dataset as a map-style ``Dataset`` of ``(input, target)`` pairs.

    - ``"fashion-mnist"``: [1, 28, 28] float images normalised with mean/std (0.2860, 0.3530),
      read from ``root`` > ``$PRUNEKIT_DATA`` > ``/usr/share/datasets/fashion-mnist``; decoded
      once per process (the tensors are shared with that cache: copy before editing them in
      place). ``download=True`` lets torchvision fetch it (never by default).
    - ``"digits"``: scikit-learn's 8x8 digits as [1, 8, 8], a fixed 80/20 split by ``split_seed``.
    - ``"mnist1d"``: MNIST-1D from ``mnist1d.data.make_dataset()`` (default args) as [1, 40].
    - ``"keywords-synth"``: 12-class keyword spotting (10 keywords, unknown, silence) as
      normalised log-mel features [1, 40, 101], spoken by ``espeak-ng`` with test speakers
      unseen in training; synthesised once per machine into the cache (see ``_speech.py``).
    - ``"imagefolder"``: ``root`` holds ``train/`` and ``test/`` (or ``val/``) class folders;
      grayscale or RGB as found, resized to ``image_size`` (default: the first image's size).

    >>> test = load("digits", train=False)
    >>> x, y = test[0]; tuple(x.shape)
    (1, 8, 8)
    """
    key = _check_name(name)
    if key == "imagefolder":
        return _imagefolder(root, train, image_size)
    return TensorDataset(*_tensors(key, root, train, download, split_seed))


def loaders(
    name: str,
    *,
    batch_size: int = 128,
    root: str | Path | None = None,
    seed: int = 0,
    subset: int | None = None,
    eval_batch_size: int | None = None,
    download: bool = False,
    image_size: int | tuple[int, int] | None = None,
    drop_last: bool = False,
    shard: tuple[int, int] | None = None,
    num_workers: int = 0,
) -> tuple[TensorBatches | DatasetBatches, TensorBatches | DatasetBatches]:
    """``(train, test)`` batch iterables of ``(inputs, targets)`` for a named dataset.

    The training batches are reshuffled every epoch by a permutation that depends only on
    ``seed`` and the epoch set with ``train.set_epoch(e)``; test batches are in file order.
    ``subset=N`` keeps the first N examples of each split. ``eval_batch_size`` defaults to
    ``max(batch_size, 256)``. ``shard=(rank, world_size)`` gives this rank's part of both splits.

    >>> train, test = loaders("digits", batch_size=64, subset=256)
    >>> xb, yb = next(iter(train)); tuple(xb.shape), len(train)
    ((64, 1, 8, 8), 4)
    """
    key = _check_name(name)
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of examples, got {subset}")
    rank, world = shard if shard is not None else (0, 1)
    eval_bs = eval_batch_size or max(batch_size, 256)
    out = []
    for train in (True, False):
        bs, shuffle = (batch_size, True) if train else (eval_bs, False)
        drop = drop_last and train
        if key == "imagefolder":
            ds = _imagefolder(root, train, image_size)
            if subset is not None:
                ds = torch.utils.data.Subset(ds, range(min(subset, len(ds))))
            batches: Any = _materialise(ds, bs, shuffle, seed, drop, rank, world, num_workers)
        else:
            x, y = _tensors(key, root, train, download, 0)
            if subset is not None:
                x, y = x[:subset], y[:subset]
            batches = TensorBatches(
                x, y, bs, shuffle=shuffle, seed=seed, drop_last=drop, rank=rank, world_size=world
            )
        out.append(batches)
    return out[0], out[1]


def _materialise(
    ds: Dataset, bs: int, shuffle: bool, seed: int, drop: bool, rank: int, world: int, workers: int
) -> TensorBatches | DatasetBatches:
    """Hold a small image folder in memory (fast epochs); stream a big one."""
    n = len(ds)  # type: ignore[arg-type]
    kwargs = dict(shuffle=shuffle, seed=seed, drop_last=drop, rank=rank, world_size=world)
    if n == 0:
        raise DatasetNotFoundError("image folder split holds no images")
    example = ds[0][0]
    if n * example.numel() * 4 > _IN_MEMORY_LIMIT:
        return DatasetBatches(ds, bs, num_workers=workers, **kwargs)  # type: ignore[arg-type]
    xs, ys = [], []
    for x, y in DatasetBatches(ds, 256, num_workers=workers):
        xs.append(x)
        ys.append(y)
    return TensorBatches(torch.cat(xs), torch.cat(ys), bs, **kwargs)  # type: ignore[arg-type]
