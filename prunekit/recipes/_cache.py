"""Cache of trained dense models, so that `prunekit run` trains each dense model once.

Key: a hash of everything that determines the trained weights (model spec and kwargs, input shape,
data set and its location, the training config, seed, prunekit and torch versions). Entries are
saved with prunekit.save into a temporary directory and renamed into place, so a crash never
leaves a half-written entry and concurrent runs at worst train twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """$PRUNEKIT_CACHE, else ~/.cache/prunekit."""
    env = os.environ.get("PRUNEKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunekit"


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_dir(spec: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_.")[:40] or "model"
    return cache_root() / "dense" / f"{safe}-{key}"


def lookup(spec: str, key: str) -> Path | None:
    path = entry_dir(spec, key)
    return path if (path / "prunekit.json").is_file() else None


def store(spec: str, key: str, save_fn) -> Path:
    """Call `save_fn(tmp_dir)` then move tmp_dir into place atomically. Returns the entry path."""
    final = entry_dir(spec, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        target = tmp / "model"
        save_fn(target)
        try:
            os.rename(target, final)
        except OSError:
            if not (final / "prunekit.json").is_file():
                raise
            # Another run stored the same entry first: keep theirs.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
