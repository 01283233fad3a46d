"""`Prefer: wait` for the predictions an API process creates: one subscription per process.

A request that waits names its process's channel in the new prediction's record (`waiter`),
and every terminal status change of the prediction is announced there too (the whole record
but its private fields, or, from a Lua script, its id and status). One thread per process
subscribed to that channel (confirmed) before any request waits on it, and hands each
announcement to the request waiting for that prediction: no SUBSCRIBE and UNSUBSCRIBE
round trips per request. When the subscription breaks, the thread subscribes again and
then every waiting request reads its record, as what was announced in between is lost.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid

import orjson
import redis

from tasks.per_process import OncePerProcess
from tasks.records import TERMINAL

log = logging.getLogger(__name__)
# Handed to every waiting request once the subscription is back: read the record.
_READ_AGAIN = object()
_SUBSCRIBE_TIMEOUT_S = 2.0


class ProcessWaiters:
    def __init__(self, store):
        self.store = store
        self.channel = ""
        self._waiting: dict[str, queue.SimpleQueue] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._start_once_per_process = OncePerProcess(self._start)

    @contextlib.contextmanager
    def waiting(self, prediction_id: str):
        """Yield a `Wait` for `prediction_id`; enter it before the prediction is created,
        with `self.channel` as its record's waiter, so that its end cannot slip past unseen."""
        self._start_once_per_process()
        if not self._subscribed.wait(_SUBSCRIBE_TIMEOUT_S):
            raise redis.TimeoutError(f"Redis did not confirm the subscription to {self.channel}.")
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._waiting[prediction_id] = inbox
        try:
            yield Wait(self.store, prediction_id, inbox, self.channel)
        finally:
            with self._lock:
                self._waiting.pop(prediction_id, None)

    def _start(self) -> None:
        # A process of its own (gunicorn forks its workers): a channel and a listener of its own.
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._waiting = {}
        self.channel = f"{self.store.prefix}waiter:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        threading.Thread(target=self._listen_forever, name="ferry-waiters", daemon=True).start()

    def _listen_forever(self) -> None:
        while True:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.subscribe(self.channel)
                self._confirmed(pubsub)
                # What was announced while unsubscribed is lost: those waiting read their records.
                # Requests that start waiting from here on are heard.
                self._tell_everyone(_READ_AGAIN)
                self._subscribed.set()
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        self._deliver(message["data"])
            except Exception as exc:  # Redis restarting: subscribe again; waiters read their records then
                if self._subscribed.is_set():  # once per outage, not at every try
                    log.warning("waiting for predictions: lost the subscription to %s (%s)", self.channel, exc)
                self._subscribed.clear()
                time.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _confirmed(self, pubsub) -> None:
        deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=remaining)
            if message is not None and message["type"] == "subscribe":
                return
        raise redis.TimeoutError("no confirmation")

    def _deliver(self, data) -> None:
        announced = orjson.loads(data)
        with self._lock:
            inbox = self._waiting.get(announced.get("id", ""))
        if inbox is not None:
            inbox.put(announced)

    def _tell_everyone(self, news) -> None:
        with self._lock:
            inboxes = list(self._waiting.values())
        for inbox in inboxes:
            inbox.put(news)


class Wait:
    def __init__(self, store, prediction_id: str, inbox: queue.SimpleQueue, channel: str):
        self.store, self.prediction_id, self.inbox = store, prediction_id, inbox
        self.channel = channel  # the prediction's `waiter`

    def wait(self, timeout_s: float) -> dict | None:
        """The record once it is terminal, or as it stands when `timeout_s` runs out."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                news = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if news is _READ_AGAIN:
                record = self.store.get(self.prediction_id)
                if record is None or record["status"] in TERMINAL:
                    return record
            elif news["status"] in TERMINAL:
                return self.store.ended(self.prediction_id, news)
        return self.store.get(self.prediction_id)
