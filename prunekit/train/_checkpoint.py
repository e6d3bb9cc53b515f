"""Atomic training checkpoints made of plain tensors and dicts (no pickled objects)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "prunekit-train-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then rename.

    An interrupted write never leaves a half-written checkpoint behind. The file gets the
    permissions `open` gives under the umask, as saves do, not the temporary file's 0600.
    """
    from prunekit.io._atomic import make_temp_file  # prunekit.io is not loaded by prunekit.train

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: safe to load)."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a readable prunekit training checkpoint ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a prunekit training checkpoint")
    if int(data.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: checkpoint version {data['version']} is newer; upgrade prunekit")
    return data
