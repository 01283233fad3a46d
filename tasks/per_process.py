"""Background threads that each process needs its own of."""
from __future__ import annotations

import os
import threading
from typing import Callable


class OncePerProcess:
    """Calls `start` the first time it is called in each process: threads do not survive a
    fork (gunicorn forks the API's workers, Celery its pool processes), so a thread started
    in a parent must be started again in every child that needs it."""

    def __init__(self, start: Callable[[], None]):
        self._start = start
        self._pid: int | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._start()
                # Last: a thread that finds it set skips the lock, and must find all `start` did.
                self._pid = os.getpid()

    def started_here(self) -> bool:
        return self._pid == os.getpid()
