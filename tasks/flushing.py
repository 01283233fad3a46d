"""Writes an API process keeps a moment and sends together, off the request path, so that
a cache hit waits for no Redis write (nor its fsync)."""
from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Callable

from tasks.per_process import OncePerProcess

log = logging.getLogger(__name__)


class PeriodicFlush:
    """Calls `write` (which takes what waits and writes it) every `every_s` from a daemon
    thread of each process that asks for it (`ensure_running`, again after a fork), and once
    at exit. A flush that fails (Redis away) is logged and its writes dropped: what is
    deferred this way is best effort."""

    def __init__(self, write: Callable[[], None], every_s: float, what: str):
        self.write, self.every_s, self.what = write, every_s, what
        self.ensure_running = OncePerProcess(self._start)
        self._writing = threading.Lock()

    def flush(self) -> None:
        """Write what waits. One write at a time: a flush returns once everything handed over
        before it is written, by a write in flight on another thread too (the exit's flush,
        a test's), and writes land in the order they were taken."""
        with self._writing:
            self.write()

    def _start(self) -> None:
        threading.Thread(target=self._forever, name=f"ferry-flush-{self.what}", daemon=True).start()
        atexit.register(self.quietly)

    def _forever(self) -> None:
        while True:
            time.sleep(self.every_s)
            self.quietly()

    def quietly(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # never let deferred writes break the process
            log.warning("%s dropped: %s", self.what, exc)
