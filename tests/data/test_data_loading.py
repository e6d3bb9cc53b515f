"""prunekit.data: IDX reader on generated fixtures, named datasets, deterministic batches."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import prunekit.data as pkd
from prunekit.data import DatasetNotFoundError, TensorBatches, write_idx_fixture


@pytest.fixture
def fixture_root(tmp_path: Path) -> Path:
    return write_idx_fixture(tmp_path / "fmnist", n_train=40, n_test=20, seed=3)


def test_fixture_reads_back_with_shapes_and_normalisation(fixture_root: Path) -> None:
    train = pkd.load("fashion-mnist", root=fixture_root)
    test = pkd.load("fashion-mnist", root=fixture_root, train=False)
    assert len(train) == 40 and len(test) == 20
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y) <= 9
    # Pixels 0..255 are mapped with the Fashion-MNIST mean/std.
    lo, hi = (0 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530
    xs = train.tensors[0]
    assert xs.min() >= lo - 1e-6 and xs.max() <= hi + 1e-6


def test_fixture_is_deterministic_and_learnable_pattern(tmp_path: Path) -> None:
    a = write_idx_fixture(tmp_path / "a", seed=1)
    b = write_idx_fixture(tmp_path / "b", seed=1)
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    x, y = pkd.load("fashion-mnist", root=a).tensors
    # The class block is the brightest 7x7 cell: nearest class-mean classifies perfectly.
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = ((x[:, None] - means[None]) ** 2).flatten(2).sum(-1).argmin(1)
    assert (pred == y).all()


def test_root_resolution_env_and_cache(fixture_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEKIT_DATA", str(fixture_root))
    assert pkd.fashion_mnist_root() == fixture_root
    first = pkd.load("fashion-mnist").tensors[0]
    again = pkd.load("fashion-mnist").tensors[0]
    assert again.data_ptr() == first.data_ptr()  # decoded once per process
    monkeypatch.delenv("PRUNEKIT_DATA")
    assert pkd.fashion_mnist_root() == Path("/usr/share/datasets/fashion-mnist")
    assert pkd.fashion_mnist_root("/x") == Path("/x")


def test_torchvision_layout_is_accepted(tmp_path: Path) -> None:
    write_idx_fixture(tmp_path / "FashionMNIST" / "raw", n_train=10, n_test=10)
    assert len(pkd.load("fashion-mnist", root=tmp_path)) == 10


def test_missing_dataset_one_line_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        pkd.load("fashion-mnist", root=tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message
    assert "dataset-fashion-mnist" in message and "PRUNEKIT_DATA" in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_one_file(fixture_root: Path) -> None:
    (fixture_root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError):
        pkd.load("fashion-mnist", root=fixture_root)


def _rewrite(path: Path, data: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(data)


def _raw(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda raw: raw[:-100], "size mismatch"),
        (lambda raw: raw[:6], "truncated"),
        (lambda raw: (1234).to_bytes(4, "big") + raw[4:], "magic"),
    ],
)
def test_corrupt_idx_raises_value_error(fixture_root: Path, corrupt, match: str) -> None:
    path = fixture_root / "train-images-idx3-ubyte.gz"
    _rewrite(path, corrupt(_raw(path)))
    with pytest.raises(ValueError, match=match):
        pkd.load("fashion-mnist", root=fixture_root)


def test_truncated_gzip_stream(fixture_root: Path) -> None:
    path = fixture_root / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="gzip|size mismatch"):
        pkd.load("fashion-mnist", root=fixture_root)


def test_label_count_mismatch(fixture_root: Path) -> None:
    labels = fixture_root / "train-labels-idx1-ubyte.gz"
    other = write_idx_fixture(fixture_root.parent / "other", n_train=7, n_test=3)
    labels.write_bytes((other / labels.name).read_bytes())
    with pytest.raises(ValueError, match="labels"):
        pkd.load("fashion-mnist", root=fixture_root)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="fashion-mnist, digits, mnist1d, imagefolder"):
        pkd.load("cifar10")
    names = ["fashion-mnist", "digits", "mnist1d", "imagefolder", "keywords-synth"]
    assert pkd.list_datasets() == names
    assert pkd.dataset_info("fashion-mnist") == {"input_shape": (1, 28, 28), "num_classes": 10}


def test_digits_split_and_loaders() -> None:
    train, test = pkd.load("digits"), pkd.load("digits", train=False)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train[0][0].shape == (1, 8, 8)
    # The split is fixed: the same examples every call, disjoint splits.
    again = pkd.load("digits", train=False)
    assert torch.equal(again.tensors[0], test.tensors[0])
    tr, te = pkd.loaders("digits", batch_size=100, subset=250, eval_batch_size=64)
    assert len(tr) == 3 and len(tr.dataset) == 250 and len(te) == 4


@pytest.mark.slow  # generating MNIST-1D takes a few seconds
def test_mnist1d_leaves_global_rng_alone() -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    train = pkd.load("mnist1d")
    assert np.random.rand() == expected
    assert len(train) == 4000 and train[0][0].shape == (1, 40)
    assert len(pkd.load("mnist1d", train=False)) == 1000


def test_loaders_fashion_from_fixture(fixture_root: Path) -> None:
    train, test = pkd.loaders("fashion-mnist", root=fixture_root, batch_size=16, subset=33)
    assert len(train) == 3 and len(train.dataset) == 33
    xb, yb = next(iter(train))
    assert xb.shape == (16, 1, 28, 28) and yb.shape == (16,)
    assert len(test.dataset) == 20  # subset larger than the split keeps it whole


def _order(batches: TensorBatches) -> torch.Tensor:
    return torch.cat([y for _, y in batches])


def test_tensor_batches_deterministic_per_seed_and_epoch() -> None:
    x, y = torch.arange(50.0)[:, None], torch.arange(50)
    a, b = (TensorBatches(x, y, 8, shuffle=True, seed=1) for _ in range(2))
    assert torch.equal(_order(a), _order(b))
    a.set_epoch(1)
    epoch1 = _order(a)
    assert not torch.equal(epoch1, _order(b))
    assert sorted(epoch1.tolist()) == list(range(50))
    c = TensorBatches(x, y, 8, shuffle=True, seed=2)
    assert not torch.equal(_order(c), _order(b))
    assert len(a) == 7 and len(TensorBatches(x, y, 8, drop_last=True)) == 6


def test_tensor_batches_iter_from_and_sequential() -> None:
    x, y = torch.arange(20.0)[:, None], torch.arange(20)
    batches = TensorBatches(x, y, 6, shuffle=True, seed=0)
    batches.set_epoch(3)
    full = [yb for _, yb in batches]
    tail = [yb for _, yb in batches.iter_from(2)]
    assert len(tail) == 2 and all(torch.equal(p, q) for p, q in zip(full[2:], tail))
    plain = TensorBatches(x, y, 6)
    assert _order(plain).tolist() == list(range(20))


def test_sharding_partitions_an_epoch() -> None:
    x, y = torch.arange(23.0)[:, None], torch.arange(23)
    full = TensorBatches(x, y, 4, shuffle=True, seed=5)
    shards = [full.sharded(r, 3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    seen = [_order(s) for s in shards]
    assert all(len(s) == 7 for s in seen) and len({len(s) for s in shards}) == 1
    together = torch.cat(seen).tolist()
    assert len(set(together)) == 21  # disjoint; the 2 left over are dropped
    with pytest.raises(ValueError, match="rank"):
        full.sharded(3, 3)
    tr, _ = pkd.loaders("digits", batch_size=32, shard=(1, 2))
    assert len(tr.dataset) == 1438 and tr.shard_size == 719


def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    train = pkd.load("imagefolder", root=tmp_path)
    assert len(train) == 6 and train[0][0].shape == (1, 12, 10)
    tr, te = pkd.loaders("imagefolder", root=tmp_path, image_size=8, batch_size=4)
    xb, yb = next(iter(tr))
    assert xb.shape == (4, 1, 8, 8) and set(yb.tolist()) <= {0, 1}
    assert len(te.dataset) == 4 and isinstance(tr, TensorBatches)
    with pytest.raises(ValueError, match="root"):
        pkd.load("imagefolder")
    (tmp_path / "val").rename(tmp_path / "holdout")
    with pytest.raises(DatasetNotFoundError, match="test/ or val/"):
        pkd.load("imagefolder", root=tmp_path, train=False)


def test_dataset_batches_match_tensor_batches() -> None:
    x, y = torch.arange(30.0)[:, None], torch.arange(30)
    ds = torch.utils.data.TensorDataset(x, y)
    streamed = pkd.DatasetBatches(ds, 7, shuffle=True, seed=4)
    held = TensorBatches(x, y, 7, shuffle=True, seed=4)
    for b in (streamed, held):
        b.set_epoch(1)
    assert torch.equal(torch.cat([yb for _, yb in streamed.iter_from(1)]), _order(held)[7:])
    assert len(streamed) == len(held) == 5
