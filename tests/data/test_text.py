"""prunekit.data text corpora: records, byte tokenizer, seeded split, LM token batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prunekit.data._text as text_mod
from prunekit.data import (
    ByteTokenizer,
    DatasetNotFoundError,
    TokenBatches,
    read_records,
    split_records,
    text_loaders,
)


def _write_corpus(root: Path, n_records: int = 60) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    half = n_records // 2
    for name, lo, hi in (("a.txt", 0, half), ("b.txt", half, n_records)):
        records = [
            f"Record number {i}: the quick brown fox {'jumps ' * (i % 5)}." for i in range(lo, hi)
        ]
        (root / name).write_text("\n%\n".join(records) + "\n%\n")
    return root


def test_tokenizer_round_trip_and_eos() -> None:
    tok = ByteTokenizer()
    text = "Hello, wörld! \t naïve ☃"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text
    stream = tok.encode_records(["ab", "ć"])
    assert stream.dtype == torch.long
    assert stream.tolist() == [97, 98, tok.eos_id, 0xC4, 0x87, tok.eos_id]
    assert tok.decode(stream) == "ab\nć\n"
    assert tok.vocab_size == tok.eos_id + 1 == 257


def test_records_split_on_percent_lines_and_clean_overstrike(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text(
        "first\nline two\n%\n\n%\n_\bu_\bn b\bbo\bol\bld\bd\n%   \nlast"
    )
    (tmp_path / "ignored.dat").write_text("not read")
    assert read_records(tmp_path) == ["first\nline two", "un bold", "last"]
    assert read_records(tmp_path, files=["x.txt"]) == read_records(tmp_path)


def test_split_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    records = read_records(_write_corpus(tmp_path))
    assert len(records) == 60 and len(set(records)) == 60
    train, held = split_records(records, held_out=0.2, seed=3)
    assert (train, held) == split_records(records, held_out=0.2, seed=3)
    assert len(held) == 12 and not set(train) & set(held)
    assert sorted(train + held) == sorted(records)
    assert split_records(records, held_out=0.2, seed=4)[1] != held
    with pytest.raises(ValueError, match="held_out"):
        split_records(records, held_out=1.0)


def test_token_batches_shapes_order_and_epochs() -> None:
    stream = torch.arange(1000)
    batches = TokenBatches(stream, seq_len=16, batch_size=8)
    out = list(batches)
    assert len(out) == len(batches) == 8  # 62 windows: 7 full batches and one of 6
    assert all(b.shape == (8, 16) and b.dtype == torch.long for b in out[:-1])
    assert out[-1].shape == (6, 16)
    assert torch.equal(torch.cat(out).flatten(), stream[: 62 * 16])  # in order, no overlap

    shuffled = TokenBatches(stream, seq_len=16, batch_size=8, shuffle=True, seed=1)
    first = torch.cat(list(shuffled))
    assert torch.equal(first, torch.cat(list(shuffled)))  # same epoch, same order
    shuffled.set_epoch(1)
    second = torch.cat(list(shuffled))
    assert not torch.equal(first, second)
    key = lambda t: sorted(t[:, 0].tolist())  # noqa: E731
    assert key(first) == key(second) == list(range(0, 62 * 16, 16))  # the same windows
    assert torch.equal(torch.cat(list(shuffled.iter_from(3))), second[3 * 8 :])
    with pytest.raises(ValueError, match="fewer than one window"):
        TokenBatches(torch.arange(10), seq_len=16)


def test_text_loaders_on_generated_corpus(tmp_path: Path) -> None:
    root = _write_corpus(tmp_path)
    train, held = text_loaders(root, seq_len=32, batch_size=4, held_out=0.2)
    batch = next(iter(train))
    assert batch.shape == (4, 32) and batch.dtype == torch.long
    assert int(batch.max()) < ByteTokenizer.vocab_size
    # the held-out stream is exactly the held-out records, in split order
    _, held_records = split_records(read_records(root), 0.2, 0)
    expected = ByteTokenizer().encode_records(held_records)
    assert torch.equal(torch.cat(list(held)).flatten(), expected[: held.n * 32])


def test_missing_corpus_names_the_debian_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(text_mod, "FORTUNES_ROOT", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="apt-get install fortunes"):
        read_records()
    with pytest.raises(DatasetNotFoundError, match=r"no \.txt files"):
        read_records(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="missing"):
        read_records(tmp_path, files=["gone.txt"])
