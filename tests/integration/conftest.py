"""A real redis-server and a real Celery worker process, started once for the session."""
from __future__ import annotations

import pytest
import redis

from app import create_app
from tasks.heartbeat import live_queues
from tests.processes import RedisServer, start_worker, stop_group, wait_for


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def real_redis(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker(redis_url, real_redis, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start_worker(redis_url, log_path)
    try:
        wait_for(lambda: "realtime-cpu" in live_queues(real_redis, "ferry:", 10), 60, "celery worker", proc)
    except Exception:
        stop_group(proc)
        print(log_path.read_text())
        raise
    yield proc
    stop_group(proc)


@pytest.fixture
def live_app(redis_url, worker):
    return create_app({"TESTING": True, "redis_url": redis_url})


@pytest.fixture
def live_client(live_app):
    return live_app.test_client()
