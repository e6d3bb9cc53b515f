"""Text corpora for language models: records, a byte tokenizer, a seeded split, token batches.

The default corpus is the prose of the Debian package ``fortunes`` (fortune-mod's data files under
/usr/share/games/fortunes): plain text files whose records are separated by lines holding only
``%``. Any directory of ``.txt`` files in the same format works too (a file without ``%`` lines
is one record). Tokens are UTF-8 bytes (ids 0-255) plus an end-of-record id 256, so nothing is
downloaded and every text round-trips.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data._batches import _SeededOrder
from prunekit.data._datasets import DatasetNotFoundError

FORTUNES_ROOT = Path("/usr/share/games/fortunes")
# Prose categories of the Debian `fortunes` package, fixed so that the corpus (and a cached model
# trained on it) does not change with the selection. Left out: ascii-art (pictures),
# songs-poems (verse layout), IRC logs and code (knghtbrd, linux, linuxcookie, debian, perl),
# translate-me (not English), and the small or formulaic disclaimer, pratchett, startrek, tao, zippy.
FORTUNE_CATEGORIES: tuple[str, ...] = (
    "art",
    "computers",
    "cookie",
    "definitions",
    "drugs",
    "education",
    "ethnic",
    "food",
    "fortunes",
    "goedel",
    "humorists",
    "kids",
    "law",
    "literature",
    "love",
    "magic",
    "medicine",
    "men-women",
    "miscellaneous",
    "news",
    "paradoxum",
    "people",
    "pets",
    "platitudes",
    "politics",
    "riddles",
    "science",
    "sports",
    "wisdom",
    "work",
)
_SEPARATOR = re.compile(r"^%[ \t]*$", re.MULTILINE)
_OVERSTRIKE = re.compile(r".\x08", re.DOTALL)  # "_\bX" underlines and "X\bX" bold of old ttys


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, plus ``eos_id`` = 256 between records.

    >>> tok = ByteTokenizer()
    >>> tok.decode(tok.encode("héllo"))
    'héllo'
    >>> tok.vocab_size
    257
    """

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-record id)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of token ids; end-of-record ids become newlines."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        parts = [b"\n" if i == self.eos_id else bytes([i]) for i in values]
        return b"".join(parts).decode("utf-8", errors="replace")

    def encode_records(self, records: Sequence[str]) -> torch.Tensor:
        """One stream of ids, each record followed by ``eos_id``: LongTensor [N]."""
        chunks = []
        for record in records:
            chunks.append(np.frombuffer(record.encode("utf-8"), dtype=np.uint8).astype(np.int64))
            chunks.append(np.array([self.eos_id], dtype=np.int64))
        if not chunks:
            return torch.zeros(0, dtype=torch.long)
        return torch.from_numpy(np.concatenate(chunks))


def _corpus_files(root: Path, files: Sequence[str] | None, default_root: bool) -> list[Path]:
    hint = (
        "install the Debian package fortunes (apt-get install fortunes) or pass root= a "
        "directory of .txt files"
        if default_root
        else "pass root= a directory of .txt files (records separated by lines holding only %)"
    )
    if not root.is_dir():
        raise DatasetNotFoundError(f"text corpus not found: {root} is not a directory; {hint}")
    if files is None:
        paths = sorted(p for p in root.rglob("*.txt") if p.is_file())
        if not paths:
            raise DatasetNotFoundError(f"no .txt files under {root}; {hint}")
        return paths
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DatasetNotFoundError(f"text corpus files missing in {root}: {missing}; {hint}")
    return [root / f for f in files]


def read_records(
    root: str | Path | None = None, *, files: Sequence[str] | None = None
) -> list[str]:
    """The records of a text corpus, in file order then record order.

    ``root=None`` reads :data:`FORTUNE_CATEGORIES` of the Debian ``fortunes`` package; otherwise
    ``files`` (names relative to ``root``) or every ``*.txt`` file under ``root``, sorted by path.
    Records are separated by lines holding only ``%``; overstrike sequences (``X\\bX``) are
    removed, trailing whitespace stripped and empty records dropped.
    """
    default_root = root is None
    base = FORTUNES_ROOT if default_root else Path(root).expanduser()
    if default_root and files is None:
        files = FORTUNE_CATEGORIES
    records = []
    for path in _corpus_files(base, files, default_root):
        text = _OVERSTRIKE.sub("", path.read_text(encoding="utf-8", errors="replace"))
        records += [r.strip("\n").rstrip() for r in _SEPARATOR.split(text)]
    return [r for r in records if r.strip()]


def split_records(
    records: Sequence[str], held_out: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
    """A seeded split by record: ``(train, held_out)``, disjoint, both in a shuffled order."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out}")
    if len(records) < 2:
        raise ValueError(f"need at least 2 records to split, got {len(records)}")
    order = np.random.default_rng(seed).permutation(len(records))
    n_held = min(len(records) - 1, max(1, round(held_out * len(records))))
    held = [records[i] for i in order[:n_held]]
    train = [records[i] for i in order[n_held:]]
    return train, held


class TokenBatches(_SeededOrder):
    """Batches of fixed-length windows cut from one token stream: LongTensor [B, T] each.

    The stream is cut into ``len(tokens) // seq_len`` non-overlapping windows (the tail that does
    not fill a window is dropped). With ``shuffle`` the window order depends only on
    ``(seed, epoch)`` (:meth:`set_epoch`); without it windows come in stream order.

    >>> batches = TokenBatches(torch.arange(100), seq_len=8, batch_size=4)
    >>> len(batches), [tuple(b.shape) for b in batches][-1]
    (4, (4, 8))
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        seq_len: int = 128,
        batch_size: int = 16,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be a 1-D stream of ids, got shape {tuple(tokens.shape)}")
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (a prediction needs context), got {seq_len}")
        n = tokens.numel() // seq_len
        if n == 0:
            raise ValueError(
                f"the stream has {tokens.numel()} tokens, fewer than one window of {seq_len}: "
                "use a shorter seq_len or more text"
            )
        super().__init__(
            n,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.tokens = tokens
        self.seq_len = seq_len
        self.windows = tokens[: n * seq_len].long().view(n, seq_len)  # [N, T], a view

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)

    def iter_from(self, batch: int) -> Iterator[torch.Tensor]:
        """Iterate the current epoch starting at batch index ``batch``."""
        for idx in self._batch_indices(batch):
            yield self.windows[idx]

    def sharded(self, rank: int, world_size: int) -> TokenBatches:
        """The same batches split across ``world_size`` data-parallel ranks."""
        return TokenBatches(
            self.tokens,
            self.seq_len,
            self.batch_size,
            shuffle=self.shuffle,
            seed=self.seed,
            drop_last=self.drop_last,
            rank=rank,
            world_size=world_size,
        )

    def __repr__(self) -> str:
        return (
            f"TokenBatches(windows={self.n}, seq_len={self.seq_len}, batch_size={self.batch_size},"
            f" shuffle={self.shuffle}, seed={self.seed})"
        )


def encode_records(records: Sequence[str], tokenizer: Any = None) -> torch.Tensor:
    """One stream of token ids, each record followed by the end-of-record id: LongTensor [N].

    `tokenizer`: None (UTF-8 bytes, :class:`ByteTokenizer`) or a Hugging Face tokenizer (its
    ids without special tokens; records separated by its ``eos_token_id``, if it has one).
    """
    if tokenizer is None or isinstance(tokenizer, ByteTokenizer):
        return ByteTokenizer().encode_records(records)
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for row in tokenizer(list(records), add_special_tokens=False)["input_ids"]:
        ids += [*row, eos] if eos is not None else row
    return torch.tensor(ids, dtype=torch.long)


def text_loaders(
    root: str | Path | None = None,
    *,
    files: Sequence[str] | None = None,
    seq_len: int = 128,
    batch_size: int = 16,
    held_out: float = 0.1,
    split_seed: int = 0,
    seed: int = 0,
    tokenizer: Any = None,
) -> tuple[TokenBatches, TokenBatches]:
    """``(train, held_out)`` LM batches (LongTensor [B, T]) of a corpus split by record.

    Train windows are reshuffled every epoch by ``(seed, epoch)``; held-out windows come in
    order. The byte tokenizer (default) gives ``ByteTokenizer.vocab_size`` = 257 ids; a Hugging
    Face `tokenizer` gives its own (see :func:`encode_records`).

    >>> train, held = text_loaders(seq_len=128, batch_size=16)  # doctest: +SKIP
    >>> next(iter(train)).shape  # doctest: +SKIP
    torch.Size([16, 128])
    """
    train_records, held_records = split_records(
        read_records(root, files=files), held_out, split_seed
    )
    train = TokenBatches(
        encode_records(train_records, tokenizer), seq_len, batch_size, shuffle=True, seed=seed
    )
    held = TokenBatches(encode_records(held_records, tokenizer), seq_len, batch_size)
    return train, held
