"""Compile the native kernels once per machine and bind them with ctypes.

The shared library is cached under ``$PRUNEKIT_CACHE/kernels/<key>/`` (default
``~/.cache/prunekit``); the key hashes the C source, the compiler, its flags and the CPU, so a
changed source or a different machine compiles afresh. Compilation uses the system C compiler
(``$CC``, else ``cc``/``gcc``/``clang``) and takes well under a second. Anything that goes wrong
(no compiler, a failed build, ``PRUNEKIT_NO_NATIVE=1``) leaves `library()` returning None: the
caller then uses the pure-PyTorch kernels, and `status()` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from prunekit.sparse._csrc import SOURCE

__all__ = ["library", "status", "cache_root"]

_LIB_NAME = "libpksparse.so"
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)
_COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict[str, object] = {}

_i64, _ptr, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    # B, R, M, rowptr, cols, vals, X, ldx, sx, bias, Y, ldy, sy, threads
    "pk_spmm": [_i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _i64, _i64, _int],
    # N, K, R, rowptr, cols, vals, x, bias, y, threads
    "pk_linear": [_i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _int],
    "pk_version": [],
    "pk_has_avx2": [],
    "pk_has_openmp": [],
}


def cache_root() -> Path:
    """$PRUNEKIT_CACHE, else ~/.cache/prunekit."""
    env = os.environ.get("PRUNEKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunekit"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and (path := shutil.which(name)):
            return path
    return None


def _cpu_identity() -> str:
    """The CPU model and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _key(compiler: str, flags: list[str]) -> str:
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    blob = "\0".join([SOURCE, compiler, version, " ".join(flags), platform.machine()])
    blob += _cpu_identity()
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _build(compiler: str, flags: list[str], target: Path) -> str | None:
    """Compile into `target` atomically; returns an error message or None."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "pksparse.c"
        src.write_text(SOURCE, encoding="utf-8")
        out = Path(tmp) / _LIB_NAME
        cmd = [compiler, *flags, "-shared", "-fPIC", "-o", str(out), str(src)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            return f"{' '.join(cmd)}: {e}"
        if done.returncode != 0 or not out.is_file():
            return f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}"
        os.replace(out, target)  # atomic: concurrent builders at worst compile twice
    return None


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = None if name == "pk_spmm" else ctypes.c_int
    if lib.pk_version() != 2:
        raise OSError(f"{path} has an unexpected kernel version")
    return lib


def _load() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("PRUNEKIT_NO_NATIVE", "") not in ("", "0"):
        return None, "disabled by PRUNEKIT_NO_NATIVE"
    import torch  # noqa: F401  (load PyTorch's OpenMP runtime first, so the kernels share it)

    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found (set CC)"
    errors = []
    for flags in _FLAG_SETS:
        target = cache_root() / "kernels" / _key(compiler, flags) / _LIB_NAME
        try:
            if not target.is_file() and (error := _build(compiler, flags, target)):
                errors.append(error)
                continue
            lib = _bind(target)
        except OSError as e:
            errors.append(f"{target}: {e}")
            continue
        simd = "AVX2" if lib.pk_has_avx2() else "portable"
        threads = "OpenMP" if lib.pk_has_openmp() else "single-threaded"
        return lib, f"native kernels ({simd}, {threads}) from {target}"
    return None, "could not build the native kernels: " + " | ".join(errors)


def library() -> ctypes.CDLL | None:
    """The bound native library, compiled on first use; None when unavailable (see `status`)."""
    lib = _state.get("lib")
    if lib is not None:  # fast path, no lock: called on every forward
        return lib  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["status"] = _load()
        return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """Why the native kernels are (not) available."""
    library()
    return str(_state["status"])
