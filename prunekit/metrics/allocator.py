"""Latency without page faults: keep freed memory in the process while timing (glibc).

glibc's malloc gives large blocks back to the kernel when they are freed (blocks it mmap'd, and
the top of the heap past its trim threshold), so the next call faults its activations back in,
page by page. Whether a call pays for that depends on the heap's history: on this project's
machine the same 16→16 3x3 conv (batch 64, 28x28, one thread) timed 1.7 ms or 3.3-4.0 ms,
alternating from one measurement to the next, and layers timed alone disagreed with the same
layers inside the model.
A serving process with a caching allocator (jemalloc or tcmalloc, as PyTorch's CPU performance
guide recommends) or a warm heap does not pay it.

So latency is measured with freed memory held (`"held"`, the default): glibc is told to serve
large blocks from its heap and never to trim it. glibc cannot return to its adaptive thresholds
once they are set, so this holds for the rest of the process: its resident memory stays at its
peak instead of shrinking after large frees. `"system"` (or the environment variable
`PRUNEKIT_ALLOCATOR=system`) measures with the allocator as it is. Elsewhere than glibc (macOS,
Windows, musl) both are the system allocator, and timings report `"system"`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

__all__ = ["ALLOCATORS", "resolve_allocator", "use_allocator"]

ALLOCATORS = ("held", "system")
ENV = "PRUNEKIT_ALLOCATOR"
M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1

_held = False


def resolve_allocator(allocator: str | None) -> str:
    """The allocator asked for: `allocator`, else `$PRUNEKIT_ALLOCATOR`, else `"held"`."""
    chosen = allocator if allocator is not None else os.environ.get(ENV) or "held"
    if chosen not in ALLOCATORS:
        source = "allocator" if allocator is not None else f"${ENV}"
        raise ValueError(f"{source} must be one of {', '.join(ALLOCATORS)}; got {chosen!r}")
    return chosen


def use_allocator(allocator: str | None) -> str:
    """Apply `allocator` (see `resolve_allocator`) and return the one timings will see:
    `"held"` only where glibc accepted the setting (once it is held, it stays held)."""
    if resolve_allocator(allocator) == "system":
        return "held" if _held else "system"
    return "held" if _hold_freed_memory() else "system"


def _hold_freed_memory() -> bool:
    global _held
    if not _held:
        libc = _glibc()
        _held = bool(
            libc is not None
            and libc.mallopt(M_MMAP_MAX, 0) == 1
            and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
        )
    return _held


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None
