"""Keeps the claims of the batches a worker process runs alive while they run.

A claim (`ferry:claim:{id}`) is a lease of `claim_lease_s`. A thread renews the leases of
every running batch each third of it, so a live batch keeps its predictions however long
the model takes, while the predictions of a worker that died lapse within one lease and
the sweeper re-sends them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

from tasks.per_process import OncePerProcess

log = logging.getLogger(__name__)


def worker_name() -> str:
    """Who holds a claim: one name per process, so a pool process's claims are its own."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    def __init__(self, store, lease_s: float):
        self.store = store
        self.lease_s = lease_s
        self._held: dict[int, list[str]] = {}
        self._lock = threading.Lock()
        self._start_once_per_process = OncePerProcess(
            lambda: threading.Thread(target=self._renew_forever, name="ferry-leases", daemon=True).start())

    @contextlib.contextmanager
    def holding(self, ids: list[str]):
        """Renew the leases on `ids`, and on any id added to the list it yields, until the
        block ends."""
        self._start_once_per_process()
        token = object()
        held = list(ids)
        with self._lock:
            self._held[id(token)] = held
        try:
            yield held
        finally:
            with self._lock:
                del self._held[id(token)]

    def held(self) -> list[str]:
        with self._lock:
            return [prediction_id for ids in self._held.values() for prediction_id in list(ids)]

    def renew_now(self) -> int:
        return self.store.renew(self.held(), worker_name(), self.lease_s)

    def _renew_forever(self) -> None:
        wake = threading.Event()
        while not wake.wait(self.lease_s / 3):
            try:
                self.renew_now()
            except Exception as exc:  # Redis may be restarting: the lease may lapse, never the work
                log.warning("could not renew claims: %s", exc)
