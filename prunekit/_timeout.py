"""A time limit for a Python-level computation that can run away (torch.export's symbolic shape
reasoning in sympy can take hours on some models), on the main thread of a Unix process.

Elsewhere (another thread, no SIGALRM, a timer already set by the caller) the computation runs
without a limit: the limit is a safeguard, never a change of behaviour.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class TimeLimitExceeded(TimeoutError):
    """Raised inside the limited block when its time is up."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise `TimeLimitExceeded` in the block after `seconds` (see the module docstring)."""
    if not _can_limit():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeLimitExceeded(f"{what} took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _can_limit() -> bool:
    return (
        hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
