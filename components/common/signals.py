"""SIGTERM as an exception, so that a step cleans up before its pod goes away.

Kubernetes stops a task (a cancelled run, a task timeout, a deleted pod) with SIGTERM and, a grace period
later, SIGKILL. Python ends on SIGTERM without unwinding, so ``finally`` blocks never run; inside
:func:`sigterm_raises` SIGTERM raises an exception instead, and the step stops its trainer or deletes its
multi-node job on the way out.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_raises(make_error: Callable[[int], BaseException]) -> Iterator[None]:
    """Raise ``make_error(signal number)`` on SIGTERM while the block runs (main thread only: Python delivers
    signals there; elsewhere the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise make_error(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
