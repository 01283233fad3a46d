"""Server-sent events of one prediction, fed by Redis pub/sub (never by polling Redis).

The stream subscribes to the prediction's channel (status and progress changes) and to
its model's queue channel (queued predictions taken, so positions moved) before it reads
the record, so no change between the read and the subscription is missed. It sends the
prediction as `GET /predictions/{id}` shows it, as `event: status` when the status changed
and `event: progress` when only the progress, partial output or queue position did, and
ends after a terminal status. Comments keep proxies from closing a quiet stream, and a
stream ends after `event_stream_max_s` (the client reconnects or polls).

Each open stream holds one API thread, so each process allows `max_event_streams`; past
that the answer is 503 with Retry-After, and clients poll instead.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import redis
from flask import Response

from tasks import records
from tasks.records import PredictionStore

log = logging.getLogger(__name__)


def format_event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class PredictionEvents:
    """One client's stream. `show(record, position)` is the record as the API shows it."""

    def __init__(self, store: PredictionStore, record: dict, show: Callable[[dict, int | None], dict],
                 slots: threading.BoundedSemaphore, heartbeat_s: float, max_s: float):
        self.store = store
        self.prediction_id = record["id"]
        self.show = show
        self.slots = slots
        self.heartbeat_s = heartbeat_s
        self.deadline = time.monotonic() + max_s
        self.pubsub = store.redis.pubsub()
        self._closed = False
        channels = [store.channel(record["id"]), store.queue_channel(record["model"], record["version"])]
        try:
            self.pubsub.subscribe(*channels)
            confirmed = 0
            while confirmed < len(channels):
                message = self.pubsub.get_message(timeout=heartbeat_s)
                if message is None:
                    raise redis.TimeoutError("Redis did not confirm the subscription")
                confirmed += message["type"] == "subscribe"
        except BaseException:
            self.close()
            raise

    def response(self) -> Response:
        response = Response(self._events(), mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # Called by the server when the client is gone or the stream ended, even if it never began.
        response.call_on_close(self.close)
        return response

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.pubsub.close()
            finally:
                self.slots.release()

    def _current(self) -> dict | None:
        record = self.store.get(self.prediction_id)
        if record is None:
            return None
        position = self.store.queue_position(record) if record["status"] == records.QUEUED else None
        return self.show(record, position)

    def _events(self) -> Iterator[str]:
        last: dict | None = None
        try:
            while True:
                shown = self._current()
                if shown is None:
                    yield format_event("error", {"message": "The prediction expired."})
                    return
                if shown != last:
                    changed = last is None or shown["status"] != last["status"]
                    yield format_event("status" if changed else "progress", shown)
                    last = shown
                if shown["status"] in records.TERMINAL:
                    return
                if not (yield from self._next_message()):
                    yield ": the stream's time is up; reconnect or poll\n\n"
                    return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("event stream of %s lost Redis: %s", self.prediction_id, exc)
            yield format_event("error", {"message": "Lost the connection to Redis; poll the prediction instead."})

    def _next_message(self) -> Iterator[str]:
        """Waits for a message on the channels, with heartbeats; False when time is up."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return False
            message = self.pubsub.get_message(timeout=min(self.heartbeat_s, remaining))
            if message is None:
                yield ": heartbeat\n\n"
            elif message["type"] == "message":
                return True
