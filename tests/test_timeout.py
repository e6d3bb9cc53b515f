"""prunekit._timeout.time_limit: interrupts a runaway Python computation on the main thread,
restores what was there, and never limits where it cannot (another thread)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from prunekit._timeout import TimeLimitExceeded, time_limit


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_long_computation_is_interrupted_and_the_handler_restored():
    before = signal.getsignal(signal.SIGALRM)
    with pytest.raises(TimeLimitExceeded, match="spinning took longer than 0.05 s"):
        with time_limit(0.05, "spinning"):
            _spin(5)
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    with time_limit(5, "quick"):  # done in time: nothing raised, the timer cleared
        _spin(0.01)
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


def test_other_threads_run_unlimited():
    outcome = []

    def work():
        with time_limit(0.01, "in a thread"):
            _spin(0.1)
        outcome.append("finished")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert outcome == ["finished"]
