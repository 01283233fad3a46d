"""Security against a real Redis and a real worker: rate limits counted in Redis, pickles refused."""
from __future__ import annotations

import pytest

from app import create_app
from tests.auth import clear_of_a_minute_edge, keyed_client
from tests.processes import wait_for

pytestmark = pytest.mark.integration


def test_rate_limits_are_counted_in_redis_and_shared_by_api_processes(redis_url, real_redis):
    # Two apps stand for two API processes: the budget is the key's, not the process's.
    config = {"TESTING": True, "redis_url": redis_url, "rate_limit": "4/minute"}
    first, second = create_app(config), create_app(config)
    client = keyed_client(first)
    other_process = second.test_client()
    other_process.environ_base.update(client.environ_base)
    clear_of_a_minute_edge()
    assert [client.get("/models").status_code for _ in range(2)] == [200, 200]
    assert [other_process.get("/models").status_code for _ in range(2)] == [200, 200]
    limited = other_process.get("/models")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.get("/models").status_code == 429
    assert real_redis.keys(f"ferry:ratelimit:*key:{client.api_key.id}*")


class _MakesAFile:
    """Unpickling this creates `path`: the proof that a pickle was (or was never) loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_the_worker_refuses_pickled_messages_and_stays_healthy(worker, live_client, redis_url, real_redis, tmp_path):
    from kombu import Connection, Exchange, Queue

    from tasks.celery_app import PREDICT_TASK, create_celery
    from tasks.settings import Settings

    log = worker.log_path
    refusals_before = log.read_text(errors="replace").count("Refusing to deserialize untrusted content of type pickle")
    marker_v2, marker_v1 = tmp_path / "unpickled-v2", tmp_path / "unpickled-v1"
    # A Celery message as Celery itself would send it, but pickled (task protocol 2) ...
    celery = create_celery(Settings(redis_url=redis_url))
    celery.send_task(PREDICT_TASK, args=[_MakesAFile(marker_v2)], queue="realtime-cpu", serializer="pickle")
    # ... and a bare pickled body in the old protocol 1 shape, straight onto the queue with kombu.
    with Connection(redis_url) as connection:
        queue = Queue("realtime-cpu", Exchange("realtime-cpu"), routing_key="realtime-cpu")
        connection.Producer().publish(
            {"task": PREDICT_TASK, "id": "pickled-v1", "args": [_MakesAFile(marker_v1)], "kwargs": {}},
            serializer="pickle", exchange=queue.exchange, routing_key="realtime-cpu", declare=[queue])
    assert marker_v2.exists() is False and marker_v1.exists() is False  # nothing here loaded them

    def refused_both():
        text = log.read_text(errors="replace")
        return text.count("Refusing to deserialize untrusted content of type pickle") >= refusals_before + 2

    wait_for(refused_both, 60, "the worker to refuse both pickled messages", worker)
    assert not marker_v2.exists() and not marker_v1.exists()
    assert worker.poll() is None
    # Discarded (the worker logs before it acknowledges), not left to be delivered again.
    def discarded():
        left = real_redis.lrange("realtime-cpu", 0, -1) + real_redis.hvals("unacked")
        return not [message for message in left if "x-python-serialize" in message]

    wait_for(discarded, 30, "the pickled messages to be discarded", worker)
    # Still healthy: a real prediction goes through after them.
    submitted = live_client.post("/models/digits/predictions", json={"input": {"pixels": [3.0] * 64}})
    assert submitted.status_code in (200, 202), submitted.json
    if submitted.status_code == 202:
        done = wait_for(lambda: (lambda body: body if body["status"] in ("succeeded", "failed") else None)(
            live_client.get(submitted.headers["Location"]).json), 120, "a prediction after the pickles", worker)
        assert done["status"] == "succeeded", done
    assert not marker_v2.exists() and not marker_v1.exists()
