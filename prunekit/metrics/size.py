"""Size on disk: bytes of the safetensors file `prunekit.save` writes, raw and compressed.

One definition everywhere (`profile`, run reports, `prunekit prune` summaries): the weights file
a save of the very model measured writes, with everything it holds, such as the masks of a
sparsified model (a bool per weight: a quarter more than float32 weights alone).
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["serialized_size", "size_fields", "COMPRESSION"]

COMPRESSION = "zlib-9"  # fast enough for large models; zeros left by pruning compress well


def serialized_size(model: nn.Module) -> tuple[int, int]:
    """`(size_bytes, size_compressed_bytes)` of the model's safetensors serialisation.

    The file is written exactly as `prunekit.save` writes `model.safetensors` (tied weights
    stored once), then streamed through zlib at level 9.
    """
    from prunekit.io._weights import write_weights

    with tempfile.TemporaryDirectory(prefix="prunekit-size-") as tmp:
        file = Path(tmp) / "model.safetensors"
        write_weights(model, file)
        raw = file.stat().st_size
        compressor = zlib.compressobj(9)
        compressed = 0
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                compressed += len(compressor.compress(chunk))
        compressed += len(compressor.flush())
    return raw, compressed


def size_fields(model: nn.Module) -> dict[str, Any]:
    """The size fields of a `Profile` (`size_bytes`, `size_compressed_bytes`, `compression`) of
    `model`, for reports that profile a deployed copy but save `model` itself."""
    raw, compressed = serialized_size(model)
    return {"size_bytes": raw, "size_compressed_bytes": compressed, "compression": COMPRESSION}
