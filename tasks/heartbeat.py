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


def live_queues(redis, prefix: str, max_age_s: float) -> set[str]:
    """Queues that at least one worker with a fresh heartbeat consumes."""
    now = time.time()
    queues: set[str] = set()
    gone = []
    for worker, raw in redis.hgetall(workers_key(prefix)).items():
        beat = json.loads(raw)
        age = now - beat["last_seen"]
        if age <= max_age_s:
            queues.update(beat["queues"])
        elif age > 60 * max_age_s:
            gone.append(worker)  # a worker that died without saying goodbye
    if gone:
        redis.hdel(workers_key(prefix), *gone)
    return queues


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
