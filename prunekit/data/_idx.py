"""Read (and write tiny fixtures of) the gzipped IDX files Fashion-MNIST ships as.

IDX layout: a big-endian header (magic, then one uint32 per dimension) followed by raw uint8 data.
Images use magic 2051 with dims (n, rows, cols); labels use magic 2049 with dims (n,).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# split -> (images file, labels file)
FILES = {
    True: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    False: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_gzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable gzip file ({exc}); re-download it") from exc


def read_idx(path: str | Path, *, magic: int) -> np.ndarray:
    """Decode one gzipped IDX file into a uint8 array, checking its magic number and size."""
    path = Path(path)
    raw = _read_gzip(path)
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number {found} (expected {magic})")
    dims = tuple(int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in range(1, ndim + 1))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: {len(raw)} bytes for dims {dims} (expected {expected}); "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read the images [N, 28, 28] and labels [N] of one split, checking they agree."""
    image_file, label_file = FILES[train]
    images = read_idx(folder / image_file, magic=IMAGES_MAGIC)
    labels = read_idx(folder / label_file, magic=LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(
            f"{folder}: {image_file} has {len(images)} images but {label_file} has "
            f"{len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{folder / label_file}: label {labels.max()} out of range 0..9")
    return images, labels


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    # mtime=0 makes the bytes reproducible for a given seed.
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_idx_fixture(
    folder: str | Path, n_train: int = 64, n_test: int = 32, seed: int = 0
) -> Path:
    """Write a tiny, valid, learnable Fashion-MNIST look-alike (the four ``*-ubyte.gz`` files).

    Class ``c`` is a bright 7x7 block at cell ``c`` of a 4x3 grid over a noisy dark 28x28 image,
    so a small model learns it in a few steps. Meant for tests of any package that needs
    Fashion-MNIST without the real data::

        root = write_idx_fixture(tmp_path)
        train, test = prunekit.data.loaders("fashion-mnist", root=root, batch_size=16)

    Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for train, n in ((True, n_train), (False, n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            row, col = divmod(int(c), 3)  # a 4x3 grid of 7x7 cells; classes 0..9
            top, left = row * 7, col * 7 + 3
            images[i, top : top + 7, left : left + 7] = rng.integers(180, 256, size=(7, 7))
        image_file, label_file = FILES[train]
        _write_idx(folder / image_file, images, IMAGES_MAGIC)
        _write_idx(folder / label_file, labels, LABELS_MAGIC)
    return folder
