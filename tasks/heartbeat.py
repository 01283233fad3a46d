"""Workers announce themselves and their queues in `{prefix}workers`, for readiness checks."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from celery.signals import worker_ready, worker_shutdown

log = logging.getLogger(__name__)
_stop = threading.Event()


def workers_key(prefix: str) -> str:
    return f"{prefix}workers"


def fresh_entries(redis, key: str, seen_field: str, max_age_s: float, forget_after_s: float) -> list[dict]:
    """The JSON entries of hash `key` whose `seen_field` is at most `max_age_s` old; those
    older than `forget_after_s` (a process that died without saying goodbye) are deleted."""
    now = time.time()
    fresh, gone = [], []
    for field, raw in redis.hgetall(key).items():
        entry = json.loads(raw)
        age = now - entry[seen_field]
        if age <= max_age_s:
            fresh.append(entry)
        elif age > forget_after_s:
            gone.append(field)
    if gone:
        redis.hdel(key, *gone)
    return fresh


def live_queues(redis, prefix: str, max_age_s: float) -> set[str]:
    """Queues that at least one worker with a fresh heartbeat consumes."""
    beats = fresh_entries(redis, workers_key(prefix), "last_seen", max_age_s, 60 * max_age_s)
    return {queue for beat in beats for queue in beat["queues"]}


def _beat_forever(redis, prefix: str, hostname: str, queues: list[str], interval_s: float) -> None:
    while not _stop.is_set():
        beat = {"queues": queues, "pid": os.getpid(), "host": socket.gethostname(), "last_seen": time.time()}
        try:
            redis.hset(workers_key(prefix), hostname, json.dumps(beat))
        except Exception as exc:  # Redis may be restarting; the next beat tries again
            log.warning("heartbeat failed: %s", exc)
        _stop.wait(interval_s)


@worker_ready.connect
def _start(sender, **kwargs):
    from tasks.context import current

    ctx = current()
    queues = sorted(queue.name for queue in sender.task_consumer.queues)
    thread = threading.Thread(
        target=_beat_forever, name="ferry-heartbeat", daemon=True,
        args=(ctx.redis, ctx.settings.key_prefix, sender.hostname, queues, ctx.settings.heartbeat_s),
    )
    thread.start()


@worker_shutdown.connect
def _stop_beating(sender, **kwargs):
    from tasks.context import current

    _stop.set()
    ctx = current()
    try:
        ctx.redis.hdel(workers_key(ctx.settings.key_prefix), sender.hostname)
    except Exception:
        pass
