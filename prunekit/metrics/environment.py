"""Where a measurement was taken: versions and machine, recorded in every report.json (DESIGN §5)."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

import torch

from prunekit._version import __version__

__all__ = ["environment"]


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores_available() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def environment() -> dict[str, Any]:
    """Versions (prunekit, torch, Python), platform, CPU model, cores and torch threads.

    >>> sorted(environment())[:3]
    ['cores', 'cores_available', 'cpu']
    """
    info: dict[str, Any] = {
        "prunekit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": _cores_available(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        info["cuda"] = {
            "version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        }
    return info
