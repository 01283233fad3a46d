"""The one Celery app, configured in one place."""
from __future__ import annotations

from celery import Celery

from tasks.settings import Settings

PREDICT_TASK = "ferry.predict"
SWEEP_TASK = "ferry.predict.sweep"
BATCH_PLAN_TASK = "ferry.batch.plan"
BATCH_CHUNK_TASK = "ferry.batch.chunk"
BATCH_NIGHTLY_TASK = "ferry.batch.nightly"
BATCH_WATCHDOG_TASK = "ferry.batch.watchdog"
# Batch work has its own queue and its own worker processes, so it never starves real time.
BATCH_QUEUE = "batch"


def create_celery(settings: Settings) -> Celery:
    celery = Celery("ferry", broker=settings.redis_url or None, set_as_current=True)
    celery.conf.update(
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
        # Flower watches task events.
        worker_send_task_events=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
    )
    return celery
