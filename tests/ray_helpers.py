"""Shared by the Ray tests: one local Ray session per module, and a per-test deadline
so that a scheduling hang (a task waiting for a CPU slot that never frees) fails the
test with every thread's stack instead of stalling the suite."""
from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys

import pytest


def start_ray(ray):
    """A local Ray on 2 CPUs (the CI machine's size), unless one is running."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False


@contextlib.contextmanager
def deadline(seconds: float, grace: float = 30.0):
    """Raise TimeoutError in the main thread after ``seconds`` (SIGALRM), after
    dumping every thread's stack to stderr. A Python handler runs only between
    bytecodes, and ``ray.get`` waits in C++ without looking at signals: if the
    error has not ended the test ``grace`` seconds later, faulthandler ends the
    process (a failed run, never a stalled one)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        raise TimeoutError(f"the test ran past its {seconds:g} s deadline (stacks above)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + grace, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def deadline_fixture(seconds: float):
    """An autouse fixture giving every test of a module ``seconds`` (a ``deadline``
    marker's first argument overrides it)."""

    @pytest.fixture(autouse=True)
    def _deadline(request):
        mark = request.node.get_closest_marker("deadline")
        with deadline(mark.args[0] if mark else seconds):
            yield

    return _deadline
