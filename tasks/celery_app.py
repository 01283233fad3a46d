"""The one Celery app, configured in one place."""
from __future__ import annotations

import contextlib
import threading
import time

from celery import Celery
from celery.worker.consumer import Consumer as WorkerConsumer
from kombu.transport import redis as kombu_redis
from kombu.utils import json as kombu_json

from tasks.settings import Settings

PREDICT_TASK = "ferry.predict"
SWEEP_TASK = "ferry.predict.sweep"
BATCH_PLAN_TASK = "ferry.batch.plan"
BATCH_CHUNK_TASK = "ferry.batch.chunk"
BATCH_NIGHTLY_TASK = "ferry.batch.nightly"
BATCH_WATCHDOG_TASK = "ferry.batch.watchdog"
# Batch work has its own queue and its own worker processes, so it never starves real time.
BATCH_QUEUE = "batch"


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one client. kombu builds a new `redis.Redis` for every
    message it publishes, and each one copies some 200 response callbacks: a third of the
    API's CPU per submit. A client is safe to share between threads (connections come from
    the channel's pool), so one per pool does the same work."""

    _sync_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:  # a pool replaced after a reconnect
            client = self._sync_client = super()._create_client()
        return client

    def _put(self, queue, message, **kwargs):
        held = getattr(_held, "messages", None)
        if held is None:
            return super()._put(queue, message, **kwargs)
        # What kombu would LPUSH (its priority list, its JSON), for the caller to push itself.
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        held.append((key, kombu_json.dumps(message)))


class Transport(kombu_redis.Transport):
    Channel = _Channel


# How long a worker gathers task events (for Flower) before it publishes them together.
EVENTS_FLUSH_S = 0.1


class EventsFlush:
    """Schedules the flush of buffered task events at most once per `interval_s`. Celery
    flushes them at the next turn of the worker's event loop, so each task's received,
    started and succeeded events are three PUBLISH round trips that block the loop (the
    first before the task reaches its pool process); gathered, they are one per interval
    for every task in it, and Celery still flushes at once when its buffer is full."""

    def __init__(self, flush, interval_s: float = EVENTS_FLUSH_S, clock=time.monotonic):
        self.flush, self.interval_s, self.clock = flush, interval_s, clock
        self._due = float("-inf")

    def __call__(self, hub) -> None:
        now = self.clock()
        if now < self._due:
            return  # a flush is scheduled already
        self._due = now + self.interval_s
        hub.call_later(self.interval_s, self._flush)

    def _flush(self) -> None:
        self._due = float("-inf")  # what is buffered from here on schedules the next one
        self.flush()


class Consumer(WorkerConsumer):
    """Celery's consumer, publishing task events at most every EVENTS_FLUSH_S."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._events_flush = EventsFlush(self._flush_events)

    def on_send_event_buffered(self):
        if self.hub:
            self._events_flush(self.hub)

    def shutdown(self):
        with contextlib.suppress(Exception):  # what is buffered goes out before the connection closes
            self._flush_events()
        super().shutdown()


_held = threading.local()


@contextlib.contextmanager
def held_messages():
    """Collect, as (Redis list, payload), the messages that Celery publishes in this thread
    instead of pushing them, so that the caller pushes them atomically with its own writes
    (the API's submit script pushes a prediction's message with its record: one round trip,
    one fsync, and never a record without a message nor a message without a record)."""
    _held.messages = []
    try:
        yield _held.messages
    finally:
        _held.messages = None


def create_celery(settings: Settings) -> Celery:
    celery = Celery("ferry", broker=settings.redis_url or None, set_as_current=True)
    celery.conf.update(
        # Redis, with one client per channel (above) instead of one per message.
        broker_transport=f"{__name__}:Transport",
        # JSON only, in and out: a pickled message is refused, never executed.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Prediction records live under ferry:prediction:*, so Celery keeps no results.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # At-least-once (README, "Delivery"): acknowledge after the work is done, and put a
        # message back when the process running it dies; each process reserves one message,
        # so a dying worker strands few.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A message whose whole worker died unacknowledged comes back after the visibility
        # timeout; the claims and the sweeper bring back the predictions of its batch sooner.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for such messages every fifth of the timeout (at most every 10 s), not
            # kombu's default of every 100 s.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 5)),
            "unacked_restore_throttle": 1,
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_timeout_s,
        },
        broker_connection_retry_on_startup=True,
        task_default_queue="realtime-cpu",
        task_create_missing_queues=True,
        # Flower watches task events, published together every EVENTS_FLUSH_S (Consumer).
        worker_send_task_events=True,
        worker_consumer=f"{__name__}:Consumer",
        worker_hijack_root_logger=False,
        timezone="UTC",
    )
    return celery
