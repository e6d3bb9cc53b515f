"""Atomic directory writes: build the new directory beside the target, then rename it into place."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class UnwritableLocationError(ValueError, PermissionError):
    """The save location cannot be written (permissions, read-only file system).

    A `ValueError` like every error a user can cause (the CLI maps it to exit code 2), and a
    `PermissionError` so that code catching OS errors sees it too.
    """


_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _unwritable(target: Path, error: OSError) -> UnwritableLocationError:
    reason = error.strerror or type(error).__name__
    return UnwritableLocationError(
        f"cannot write {target}: {reason} ({error.filename or target}); "
        "choose a writable location or fix its permissions"
    )


def _umask() -> int:
    """The process umask, read where the kernel reports it (Linux), else by setting it back."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """`tempfile.mkdtemp` in `parent`, then given the permissions `mkdir` gives under the umask
    rather than 0700: it becomes a save or run directory others may be meant to read."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, 0o777 & ~_umask())
    return path


def make_temp_file(parent: Path, prefix: str, suffix: str = "") -> tuple[int, Path]:
    """(descriptor, path) of `tempfile.mkstemp` in `parent`, given the permissions `open` gives
    under the umask rather than 0600: it is renamed over a file others may be meant to read."""
    fd, name = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def default_permissions(root: Path) -> None:
    """Give `root` and what it holds the permissions `mkdir` / `open` would under the umask.

    Some writers create private files (safetensors writes 0600); a save or run directory is meant
    to be shared like any file its owner writes. Executable files keep their execute bits.
    """
    mask = _umask()
    for path in (Path(root), *Path(root).rglob("*")):
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode):
            mode = 0o777 & ~mask
        elif stat.S_ISREG(info.st_mode):
            mode = (0o777 if info.st_mode & 0o111 else 0o666) & ~mask
        else:
            continue  # symlinks and the like keep theirs
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)


def _link_or_copy(src: str, dst: str) -> None:
    """Hard link when possible (instant, and the old directory stays intact), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path, replaced: set[str]) -> None:
    """Bring the files of `old` that this save does not replace (reports, exports...) into `new`."""
    for entry in old.iterdir():
        if entry.name in replaced or (new / entry.name).exists():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(new / entry.name))


def _fsync_files(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system allows syncing a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_parents(parent: Path) -> list[Path]:
    """Create missing parent directories; returns those created, deepest first."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
    return missing


@contextlib.contextmanager
def atomic_directory(
    target: Path, *, replaceable: Callable[[Path], bool], replaced: set[str]
) -> Iterator[Path]:
    """Yield an empty temporary sibling of `target`; when the block succeeds it becomes `target`.

    - An existing `target` is replaced only if it is empty or `replaceable(target)` says it is
      ours; its other entries (not named in `replaced`) are carried over by hard link.
    - The old directory is renamed aside, the new one renamed in, then the old one deleted; if the
      second rename fails the old directory is put back. Readers never see a half-written save
      (between the two renames the path is briefly absent).
    - On any failure the temporary directory (and parents this call created) are removed.
    - Permission problems raise `UnwritableLocationError`.
    - The new directory and its files get the permissions `mkdir` / `open` give under the umask.
    """
    target = Path(os.path.abspath(target))
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise ValueError(f"{target} exists and is not a directory; choose another path")
        if any(target.iterdir()) and not replaceable(target):
            raise ValueError(
                f"{target} is a non-empty directory that is not a prunekit save; refusing to "
                "overwrite it. Choose a new path or empty the directory"
            )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot save to {target}: {parent} is a file, not a directory")
            break
    created: list[Path] = []
    tmp: Path | None = None
    try:
        created = _make_parents(target.parent)
        tmp = make_temp_dir(target.parent, f".{target.name}.tmp-")
        yield tmp
        default_permissions(tmp)  # before carrying over: those files are hard links of the old
        _fsync_files(tmp)
        if target.is_dir():
            _carry_over(target, tmp, replaced)
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            try:
                os.rename(target, old)  # onto an empty directory: allowed, atomic
            except BaseException:
                old.rmdir()
                raise
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            tmp = None
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
            tmp = None
        _fsync_dir(target.parent)
    except OSError as e:
        _cleanup(tmp, created)
        if isinstance(e, UnwritableLocationError) or e.errno not in _UNWRITABLE:
            raise
        raise _unwritable(target, e) from e
    except BaseException:
        _cleanup(tmp, created)
        raise


def _cleanup(tmp: Path | None, created: list[Path]) -> None:
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    for d in created:  # deepest first; stops at the first that is not empty
        try:
            d.rmdir()
        except OSError:
            break
