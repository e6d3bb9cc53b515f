"""Compressed storage of a (pruned) state dict: positions + values + entropy coding, no pickle.

Each floating tensor is split into the *positions* of its nonzeros and their *values*:

- positions: ``"bitmask"`` (one bit per element), ``"relative"`` (the gap to the previous
  nonzero in a byte, 0 meaning "skip 255", as the relative indices of Deep Compression) or
  ``"dense"`` (no positions: every value stored); ``"auto"`` keeps whichever codes smallest.
  A zero is a value equal to 0: masking by multiplication leaves ``-0.0`` for negative weights,
  which decode as ``+0.0`` (equal, and computing the same) unless ``zero_signs=True`` stores
  their signs too (then lossless files decode byte for byte, at about one bit per zero).
- values: ``"fp32"`` (the tensor's own dtype, lossless), ``"fp16"``, ``"int8"`` (one symmetric
  scale per output channel; a nonzero never rounds to zero) or ``"kmeans"`` (weight sharing: a
  codebook of 2**bits centroids fitted by k-means with linear initialisation, one index per
  nonzero; `fc_bits` for 2-D weights, `conv_bits` for 4-D ones, as in Deep Compression).
  Lossy encodings apply only to floating tensors with two or more dimensions (weights); biases,
  norms and integer buffers are always stored exactly.
- Every stream is then entropy coded with the smallest of raw LZMA2 (a few literal-context
  settings) and zlib, level 9.

Bool buffers equal to the nonzero pattern of the tensor they mask (``weight_mask`` of
`prunekit.unstructured`) cost nothing: they are rebuilt from that tensor's positions. Tensors
sharing memory (tied weights) are stored once.

The container is a safetensors file holding two uint8 tensors: all streams back to back, and the
JSON description of the tensors (zlib-compressed: it is a few percent of a small model's file).
Nothing is unpickled; the data carries a CRC-32 checked on decoding.

>>> import torch
>>> state = {"w": torch.tensor([[0.0, 1.5], [0.0, -2.0]])}
>>> blob = encode_state(state, Compression())
>>> torch.equal(decode_state(*blob)["w"], state["w"])
True
"""

from __future__ import annotations

import json
import lzma
import math
import os
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "Compression",
    "PRESETS",
    "encode_state",
    "decode_state",
    "write_compressed",
    "read_compressed",
]

STREAM_NAME = "prunekit.compressed"
DESCRIPTION_NAME = "prunekit.description"  # the JSON description, zlib-compressed
META_KEY = "prunekit.compression"  # header metadata: the codec version
CODEC_VERSION = 1

VALUE_KINDS = ("fp32", "fp16", "int8", "kmeans")
POSITION_KINDS = ("auto", "bitmask", "relative", "dense")
CODECS = ("auto", "lzma", "zlib", "none")
DENSE_ABOVE = 0.97  # positions="auto": tensors denser than this store every value, no positions


@dataclass(frozen=True)
class Compression:
    """How `encode_state` / ``prunekit.save(compress=...)`` stores tensors (see module doc)."""

    values: str = "fp32"
    fc_bits: int = 5  # k-means codebook of 2**fc_bits entries for 2-D weights (32)
    conv_bits: int = 8  # and of 2**conv_bits for weights of 3 or more dims (256)
    kmeans_iters: int = 30
    positions: str = "auto"
    codec: str = "auto"
    zero_signs: bool = False  # lossless: also keep which zeros are -0.0 (byte-exact files)

    def __post_init__(self) -> None:
        if self.values not in VALUE_KINDS:
            raise ValueError(f"values must be one of {list(VALUE_KINDS)}, got {self.values!r}")
        if self.positions not in POSITION_KINDS:
            raise ValueError(
                f"positions must be one of {list(POSITION_KINDS)}, got {self.positions!r}"
            )
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {list(CODECS)}, got {self.codec!r}")
        for name in ("fc_bits", "conv_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
                raise ValueError(f"{name} must be an integer from 1 to 8, got {bits!r}")
        if not isinstance(self.kmeans_iters, int) or self.kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be a non-negative integer: {self.kmeans_iters!r}")

    @property
    def lossless(self) -> bool:
        return self.values == "fp32"

    @classmethod
    def resolve(cls, compress: Any) -> Compression:
        """`True` / a preset name / a dict of fields / a Compression -> a Compression."""
        if isinstance(compress, Compression):
            return compress
        if compress is True:
            return PRESETS["lossless"]
        if isinstance(compress, str):
            if compress not in PRESETS:
                raise ValueError(
                    f"unknown compression preset {compress!r}; choose one of {sorted(PRESETS)} "
                    "or pass a dict of prunekit.sparse.Compression fields"
                )
            return PRESETS[compress]
        if isinstance(compress, dict):
            known = {f.name for f in fields(cls)}
            if unknown := sorted(set(compress) - known):
                raise ValueError(f"unknown compression option(s) {unknown}; known: {sorted(known)}")
            return cls(**compress)
        raise TypeError(
            "compress must be True, a preset name "
            f"({', '.join(sorted(PRESETS))}), a dict of options or a prunekit.sparse.Compression, "
            f"got {type(compress).__name__}"
        )


PRESETS: dict[str, Compression] = {
    "lossless": Compression(),
    "exact": Compression(zero_signs=True),
    "fp16": Compression(values="fp16"),
    "int8": Compression(values="int8"),
    "kmeans": Compression(values="kmeans"),
}


# ---------------------------------------------------------------- entropy coding of one stream


def _lzma_filters(lc: int) -> list[dict[str, Any]]:
    return [
        {
            "id": lzma.FILTER_LZMA2,
            "preset": 9,
            "lc": lc,
            "lp": 0,
            "pb": 0,
        }
    ]


def _pack(data: bytes, codec: str) -> tuple[bytes, dict[str, Any]]:
    """Entropy-code `data`; returns the smallest candidate and how to decode it."""
    candidates: list[tuple[bytes, dict[str, Any]]] = [(data, {"codec": "none"})]
    if codec in ("auto", "zlib"):
        candidates.append((zlib.compress(data, 9), {"codec": "zlib"}))
    if codec in ("auto", "lzma"):
        for lc in (0,) if codec == "auto" else (3,):
            packed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(lc))
            candidates.append((packed, {"codec": "lzma", "lc": lc}))
    if codec != "auto":
        candidates = [c for c in candidates if c[1]["codec"] == codec]
    return min(candidates, key=lambda c: len(c[0]))


def _unpack(data: bytes, info: dict[str, Any], size: int) -> bytes:
    codec = info.get("codec")
    if codec == "none":
        out = data
    elif codec == "zlib":
        out = zlib.decompress(data)
    elif codec == "lzma":
        out = lzma.decompress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(int(info["lc"])))
    else:
        raise ValueError(f"unknown stream codec {codec!r}")
    if len(out) != size:
        raise ValueError(f"a stream decoded to {len(out)} bytes, {size} expected")
    return out


# ---------------------------------------------------------------- positions


def _nonzero_mask(flat: torch.Tensor) -> np.ndarray:
    """True where the value is not zero (NaN counts as nonzero, -0.0 as zero)."""
    return (flat != 0).numpy()


def _relative(index: np.ndarray) -> bytes:
    """Gaps to the previous nonzero in bytes 1..255; a 0 byte skips 255 positions."""
    gaps = np.diff(np.concatenate([[-1], index.astype(np.int64)]))
    skips = (gaps - 1) // 255
    last = gaps - 255 * skips  # 1..255
    out = np.zeros(int(skips.sum()) + len(gaps), dtype=np.uint8)
    ends = np.cumsum(skips + 1) - 1  # where each nonzero's own byte goes
    out[ends] = last
    return out.tobytes()


def _from_relative(data: bytes, numel: int) -> np.ndarray:
    codes = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    steps = np.where(codes == 0, 255, codes)
    position = np.cumsum(steps) - 1
    index = position[codes != 0]
    if len(index) and (index[-1] >= numel):
        raise ValueError("relative positions run past the end of the tensor")
    return index


def _positions(mask: np.ndarray, kind: str, codec: str) -> tuple[str, bytes, dict[str, Any], int]:
    """(kind, packed, codec info, raw size) of the smallest position coding."""
    options = []
    if kind in ("auto", "bitmask"):
        options.append(("bitmask", np.packbits(mask, bitorder="little").tobytes()))
    if kind in ("auto", "relative"):
        options.append(("relative", _relative(np.flatnonzero(mask))))
    best = None
    for name, raw in options:
        packed, info = _pack(raw, codec)
        if best is None or len(packed) < len(best[1]):
            best = (name, packed, info, len(raw))
    return best


def _decode_positions(kind: str, raw: bytes, numel: int) -> np.ndarray:
    if kind == "bitmask":
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=numel, bitorder="little")
        return np.flatnonzero(bits)
    if kind == "relative":
        return _from_relative(raw, numel)
    raise ValueError(f"unknown position coding {kind!r}")


# ---------------------------------------------------------------- values


def kmeans_1d(values: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook (k centroids, ascending) and the index of each value: Lloyd's algorithm in 1-D
    with centroids initialised evenly between min and max (Deep Compression's linear init)."""
    v = values.detach().double().flatten()
    if v.numel() == 0:  # a tensor pruned to nothing keeps no values (and needs no codebook)
        return torch.zeros(1, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    k = max(1, min(k, int(v.numel())))
    lo, hi = float(v.min()), float(v.max())
    centroids = torch.linspace(lo, hi, k, dtype=torch.float64)
    index = torch.zeros(v.numel(), dtype=torch.long)
    for _ in range(iters + 1):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        index = torch.bucketize(v, bounds)
        counts = torch.bincount(index, minlength=k).double()
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, index, v)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        updated, _ = torch.sort(updated)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    bounds = (centroids[1:] + centroids[:-1]) / 2
    return centroids, torch.bucketize(v, bounds)


def _little(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _lossy(tensor: torch.Tensor, options: Compression) -> bool:
    """Lossy value codings apply to non-empty floating tensors of 2+ dims (weights) only, and
    only where the coding can represent the values: a tensor holding inf or NaN (int8's scale
    and k-means' centroids would turn every value of its row into NaN) or, for fp16, values
    beyond its range (they would read back as inf) or nonzeros below its smallest step (they
    would read back as zeros) is stored exactly instead."""
    if options.lossless or not tensor.is_floating_point() or tensor.dim() < 2:
        return False
    if tensor.numel() == 0 or not bool(torch.isfinite(tensor).all()):
        return False
    return options.values != "fp16" or _fits_fp16(tensor)


FP16_SMALLEST = 2.0**-24  # float16's smallest subnormal


def _fits_fp16(tensor: torch.Tensor) -> bool:
    """Whether every nonzero of `tensor` reads back from float16 finite and nonzero."""
    magnitude = tensor.detach().abs()
    nonzero = magnitude[magnitude != 0]
    if nonzero.numel() == 0:
        return True
    return (
        float(nonzero.max()) <= torch.finfo(torch.float16).max
        and float(nonzero.min()) >= FP16_SMALLEST
    )


def _encode_values(
    tensor: torch.Tensor, index: np.ndarray, options: Compression
) -> tuple[str, list[bytes], dict[str, Any]]:
    """(kind, raw streams, parameters) for the values at flat `index` of `tensor`."""
    flat = tensor.detach().reshape(-1)
    values = flat[torch.from_numpy(index)]
    lossy = _lossy(tensor, options)
    if not lossy:
        return "raw", [_raw_bytes(values)], {}
    if options.values == "fp16":
        return "fp16", [_little(values.to(torch.float16).numpy())], {}
    if options.values == "int8":
        rows = torch.from_numpy(index // max(1, flat.numel() // tensor.shape[0]))
        v = values.double()
        peak = torch.zeros(tensor.shape[0], dtype=torch.float64).scatter_reduce(
            0, rows, v.abs(), reduce="amax"
        )
        scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
        q = torch.round(v / scale[rows]).clamp(-127, 127)
        q = torch.where((q == 0) & (v != 0), torch.sign(v), q)  # nonzeros stay nonzero
        scales = _little(scale.float().numpy())
        return "int8", [q.to(torch.int8).numpy().tobytes(), scales], {}
    bits = options.fc_bits if tensor.dim() == 2 else options.conv_bits
    codebook, idx = kmeans_1d(values, 2**bits, options.kmeans_iters)
    book = _little(codebook.float().numpy())
    return "kmeans", [idx.to(torch.uint8).numpy().tobytes(), book], {"bits": bits}


def _raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return _little(t.view(torch.int16).numpy())
    return _little(t.numpy())


def _decode_values(
    kind: str, raws: list[bytes], params: dict[str, Any], dtype: torch.dtype, count: int
) -> torch.Tensor:
    if kind == "raw":
        if dtype == torch.bfloat16:
            return torch.from_numpy(np.frombuffer(raws[0], dtype="<i2").copy()).view(dtype)
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
        out = torch.from_numpy(
            np.frombuffer(raws[0], dtype=np_dtype).astype(np_dtype.newbyteorder("="))
        )
    elif kind == "fp16":
        out = torch.from_numpy(np.frombuffer(raws[0], dtype="<f2").astype(np.float16))
    elif kind == "int8":
        q = torch.from_numpy(np.frombuffer(raws[0], dtype=np.int8).astype(np.float32))
        scales = torch.from_numpy(np.frombuffer(raws[1], dtype="<f4").astype(np.float32))
        rows = torch.from_numpy(params["rows"])
        out = q * scales[rows]
    elif kind == "kmeans":
        idx = torch.from_numpy(np.frombuffer(raws[0], dtype=np.uint8).astype(np.int64))
        book = torch.from_numpy(np.frombuffer(raws[1], dtype="<f4").astype(np.float32))
        if len(idx) and int(idx.max()) >= len(book):
            raise ValueError("a k-means index points past its codebook")
        out = book[idx]
    else:
        raise ValueError(f"unknown value coding {kind!r}")
    if out.numel() != count:
        raise ValueError(f"{out.numel()} values decoded, {count} expected")
    return out.to(dtype)


# ---------------------------------------------------------------- whole state dicts


class _Writer:
    """Concatenates packed streams and describes each (offset, sizes, codec)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def add(self, packed: bytes, info: dict[str, Any], raw_bytes: int) -> dict[str, Any]:
        entry = {"offset": self.offset, "bytes": len(packed), "raw_bytes": raw_bytes, **info}
        self.chunks.append(packed)
        self.offset += len(packed)
        return entry


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _storage_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _coded_values(
    tensor: torch.Tensor, index: np.ndarray, options: Compression
) -> tuple[str, dict[str, Any], list[tuple[bytes, dict[str, Any], int]]]:
    kind, raws, params = _encode_values(tensor, index, options)
    return kind, params, [(*_pack(raw, options.codec), len(raw)) for raw in raws]


def _size(streams: list[tuple[bytes, dict[str, Any], int]]) -> int:
    return sum(len(packed) for packed, _, _ in streams)


def encode_state(
    state: dict[str, torch.Tensor], options: Compression | Any = True
) -> tuple[bytes, dict[str, Any]]:
    """Encode a state dict into (bytes, JSON-able description); `decode_state` inverts it."""
    options = Compression.resolve(options)
    writer = _Writer()
    tensors: dict[str, Any] = {}
    seen: dict[tuple[Any, ...], str] = {}
    patterns: dict[str, np.ndarray] = {}  # name -> exact nonzero pattern after decoding
    for name, original in state.items():
        tensor = original.detach().cpu().contiguous()
        entry: dict[str, Any] = {"shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype)}
        tensors[name] = entry
        key = _storage_key(original)
        if key is not None and key in seen:
            entry["same_as"] = seen[key]  # tied: stored once
            continue
        if key is not None:
            seen[key] = name
        flat = tensor.reshape(-1)
        numel = flat.numel()
        if tensor.dtype == torch.bool:
            bits = flat.numpy()
            source = name.removesuffix("_mask")
            if name.endswith("_mask") and np.array_equal(patterns.get(source), bits):
                entry["mask_of"] = source  # rebuilt from the masked tensor's positions
                continue
            raw = np.packbits(bits, bitorder="little").tobytes()
            entry["values"] = {
                "kind": "bits",
                "streams": [writer.add(*_pack(raw, options.codec), len(raw))],
            }
            patterns[name] = bits
            continue
        lossy = _lossy(tensor, options)
        mask = _nonzero_mask(flat)
        zeros_move = lossy and not mask.all()  # lossy coding of zeros would move them
        if not tensor.is_floating_point() or not numel:
            sparse_coding = False
        elif options.positions == "auto":
            # positions cost at most ~1 bit per element and save a whole value per zero: worth it
            # unless (nearly) every element is nonzero
            sparse_coding = zeros_move or float(mask.mean()) <= DENSE_ABOVE
        else:
            sparse_coding = options.positions != "dense"
        sparse_positions = None
        if sparse_coding:
            index = np.flatnonzero(mask)
            sparse_positions = (_positions(mask, options.positions, options.codec), index)
            kind, params, streams = _coded_values(tensor, index, options)
        elif zeros_move:  # positions="dense" and lossy values: store this tensor exactly
            kind, params, streams = _coded_values(tensor, np.arange(numel), PRESETS["lossless"])
        else:
            kind, params, streams = _coded_values(tensor, np.arange(numel), options)
        if sparse_positions is not None:
            (pos_kind, packed, info, raw_size), index = sparse_positions
            entry["positions"] = {
                "kind": pos_kind,
                "count": int(len(index)),
                "stream": writer.add(packed, info, raw_size),
            }
            patterns[name] = mask
            negative_zeros = torch.signbit(flat[torch.from_numpy(~mask)]).numpy()
            if options.zero_signs and not lossy and negative_zeros.any():
                raw = np.packbits(negative_zeros, bitorder="little").tobytes()
                entry["zero_signs"] = writer.add(*_pack(raw, options.codec), len(raw))
        elif kind == "raw":
            patterns[name] = mask
        entry["values"] = {"kind": kind, **params, "streams": [writer.add(*s) for s in streams]}
    blob = b"".join(writer.chunks)
    description = {
        "codec_version": CODEC_VERSION,
        "options": asdict(options),
        "crc32": zlib.crc32(blob),
        "tensors": tensors,
    }
    return blob, description


def _stream(blob: bytes, info: dict[str, Any]) -> bytes:
    start, size = int(info["offset"]), int(info["bytes"])
    if start < 0 or size < 0 or start + size > len(blob):
        raise ValueError("a compressed stream lies outside the data")
    return _unpack(blob[start : start + size], info, int(info["raw_bytes"]))


def decode_state(blob: bytes, description: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rebuild the state dict encoded by `encode_state` (exact, or the quantised values)."""
    if description.get("codec_version") != CODEC_VERSION:
        raise ValueError(
            f"compressed weights use codec version {description.get('codec_version')!r}; this "
            f"prunekit reads version {CODEC_VERSION}; upgrade prunekit"
        )
    if zlib.crc32(blob) != description.get("crc32"):
        raise ValueError("the compressed data does not match its CRC-32 (corrupted)")
    state: dict[str, torch.Tensor] = {}
    positions_of: dict[str, np.ndarray] = {}
    for name, entry in description["tensors"].items():
        shape = [int(s) for s in entry["shape"]]
        dtype = getattr(torch, entry["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{name}: unknown dtype {entry['dtype']!r}")
        numel = math.prod(shape)
        if "same_as" in entry:
            state[name] = state[entry["same_as"]]
            continue
        if "mask_of" in entry:
            mask = torch.zeros(numel, dtype=torch.bool)
            mask[torch.from_numpy(positions_of[entry["mask_of"]])] = True
            state[name] = mask.reshape(shape)
            continue
        values = entry["values"]
        raws = [_stream(blob, s) for s in values["streams"]]
        if values["kind"] == "bits":
            bits = np.unpackbits(
                np.frombuffer(raws[0], dtype=np.uint8), count=numel, bitorder="little"
            )
            state[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
            positions_of[name] = np.flatnonzero(bits)
            continue
        if "positions" in entry:
            pos = entry["positions"]
            index = _decode_positions(pos["kind"], _stream(blob, pos["stream"]), numel)
            if len(index) != int(pos["count"]):
                raise ValueError(f"{name}: {len(index)} positions decoded, {pos['count']} saved")
        else:
            index = np.arange(numel)
        params = dict(values)
        if values["kind"] == "int8":
            params["rows"] = index // max(1, numel // max(1, shape[0]))
        flat = torch.zeros(numel, dtype=dtype)
        if numel:
            flat[torch.from_numpy(index)] = _decode_values(
                values["kind"], raws, params, dtype, len(index)
            )
        if "zero_signs" in entry:
            zeros = np.ones(numel, dtype=bool)
            zeros[index] = False
            zeros = np.flatnonzero(zeros)
            signs = np.unpackbits(
                np.frombuffer(_stream(blob, entry["zero_signs"]), dtype=np.uint8),
                count=len(zeros),
                bitorder="little",
            )
            flat[torch.from_numpy(zeros[signs.astype(bool)])] = -0.0
        if "positions" in entry:
            positions_of[name] = index
        elif values["kind"] == "raw":
            positions_of[name] = np.flatnonzero(_nonzero_mask(flat))
        state[name] = flat.reshape(shape)
    return state


def write_compressed(
    state: dict[str, torch.Tensor], file: str | os.PathLike[str], options: Any = True
) -> dict[str, Any]:
    """Write `state` compressed to the safetensors `file`; returns a JSON summary."""
    options = Compression.resolve(options)
    blob, description = encode_state(state, options)
    text = json.dumps(description, separators=(",", ":")).encode()
    tensors = {STREAM_NAME: _uint8(blob), DESCRIPTION_NAME: _uint8(zlib.compress(text, 9))}
    save_file(tensors, str(file), metadata={"format": "pt", META_KEY: str(CODEC_VERSION)})
    raw = sum(t.numel() * t.element_size() for t in state.values())
    return {
        "options": asdict(options),
        "lossless": options.lossless,
        "tensor_bytes": int(raw),
        "file_bytes": Path(file).stat().st_size,
    }


def _uint8(data: bytes) -> torch.Tensor:
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def read_compressed(
    file: str | os.PathLike[str],
) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, torch.Tensor]]:
    """Read a file written by `write_compressed`: ({name: (shape, dtype)}, state dict)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            names = set(f.keys())
            data = f.get_tensor(STREAM_NAME) if STREAM_NAME in names else None
            text = f.get_tensor(DESCRIPTION_NAME) if DESCRIPTION_NAME in names else None
    except Exception as e:  # safetensors raises its own SafetensorError
        raise ValueError(
            f"{file} is not a valid safetensors file ({e}); the save is corrupted or incomplete. "
            "Re-save the model with prunekit.save"
        ) from e
    if data is None or text is None or META_KEY not in metadata:
        raise ValueError(f"{file} holds no prunekit compressed weights; the save is corrupted")
    try:
        description = json.loads(zlib.decompress(text.numpy().tobytes()))
        state = decode_state(data.numpy().tobytes(), description)
        header = {
            name: (tuple(entry["shape"]), entry["dtype"])
            for name, entry in description["tensors"].items()
        }
    except (
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        lzma.LZMAError,
        zlib.error,
    ) as e:
        raise ValueError(
            f"the compressed weights in {file} cannot be decoded ({e}); the save is corrupted. "
            "Re-save the model with prunekit.save"
        ) from e
    return header, state


def load_decoded(model: torch.nn.Module, state: dict[str, torch.Tensor], device: Any) -> None:
    """Strictly load a decoded state dict (after `check_compatible`), as `pk.load` does."""
    try:
        model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"could not load the decoded weights into the rebuilt model: {e}") from e
