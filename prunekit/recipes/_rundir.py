"""Output directories: fail fast on unwritable paths, write files atomically."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def check_output_dir(
    path: str | Path, *, overwrite: bool = False, allow_existing: bool = False
) -> Path:
    """Check, without writing anything, that `path` can be created (or reused) as an output directory.

    Raises PermissionError / ValueError with a one-line message naming the fix. Call it before any
    long work so that a bad `--out` fails at once.
    """
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"output path {path} exists and is not a directory; choose another --out"
            )
        if any(path.iterdir()) and not allow_existing:
            if not overwrite:
                raise ValueError(
                    f"output directory {path} already exists and is not empty; "
                    "choose another --out or pass --overwrite"
                )
            if not is_prunekit_output(path):
                raise ValueError(
                    f"output directory {path} holds files that prunekit did not write; "
                    "refusing to overwrite it, choose another --out"
                )
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"output directory {path} is not writable; choose another --out")
        return path
    # The nearest existing ancestor must be a writable directory.
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create output directory {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create output directory {path}: {parent} is not writable")
    return path


PRUNEKIT_MARKERS = ("prunekit.json", "recipe.yaml", "state.json", "report.json")


def is_prunekit_output(path: Path) -> bool:
    """A saved model or a run directory: what --overwrite may replace (never arbitrary folders)."""
    return any((Path(path) / name).is_file() for name in PRUNEKIT_MARKERS)


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>, with a numeric suffix if that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file.

    The file gets the permissions `open` gives (the umask applies), as a plain write would.
    """
    from prunekit.io._atomic import make_temp_file

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | set):
        return list(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)
