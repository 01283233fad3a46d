"""A real redis-server and real Celery worker processes, started once for the session."""
from __future__ import annotations

import pytest
import redis
import yaml

from app import create_app
from app.keys import SCOPES, KeyStore
from tasks.heartbeat import live_queues
from tasks.settings import Settings
from tests.auth import TEST_RATE_LIMIT, authorize
from tests.fake_models import declaration
from tests.processes import RedisServer, start_worker, stop_group, wait_for

# The bootstrap key (FERRY_ADMIN_KEY) of `live_app`; `live_client` sends a stored key instead.
ADMIN_KEY = "integration-admin-key"


@pytest.fixture(scope="session")
def repository_file(tmp_path_factory):
    """The shipped models plus a slow test model, for batch jobs long enough to interrupt,
    and a probe that says where it ran."""
    document = yaml.safe_load(open(Settings().model_repository))
    document["models"].append(declaration("slow", "SlowEach", batching={"max_batch_size": 5, "max_wait_ms": 0}))
    document["models"].append(declaration("probe", "Probe"))
    document["models"] += [
        declaration("flaky", "Flaky", retries={"max": 3, "backoff_s": 0.2}),
        declaration("sleepy", "Slow", timeout_s=1),
        declaration("slow-setup", "SlowSetup", timeout_s=1),
        declaration("stubborn", "Stubborn", timeout_s=1, hard_timeout_s=2),
        declaration("patient", "Patient", cancelable=True),
        declaration("busy", "Patient"),
        # A subprocess model that dies when asked (tests/subprocess_model.py).
        {"name": "mortal", "kind": "subprocess", "version": "1", "command": ["python", "tests/subprocess_model.py"],
         "inputs": {"x": {"type": "number", "required": True}}},
    ]
    path = tmp_path_factory.mktemp("repository") / "repository.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "batch-inputs").mkdir()
    return folder


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


def run_worker(redis_url, real_redis, log_dir, queues, **settings):
    log_path = log_dir / f"worker-{queues}.log"
    proc = start_worker(redis_url, log_path, queues=queues, **settings)
    proc.log_path = log_path  # for tests that read what the worker said
    try:
        wait_for(lambda: queues in live_queues(real_redis, "ferry:", 10), 60, f"worker for {queues}", proc)
    except Exception:
        stop_group(proc)
        print(log_path.read_text())
        raise
    return proc


@pytest.fixture(scope="session")
def worker(redis_url, real_redis, tmp_path_factory, repository_file, data_dir):
    proc = run_worker(redis_url, real_redis, tmp_path_factory.mktemp("worker"), "realtime-cpu",
                      model_repository=repository_file, data_dir=data_dir, http_model_hosts="127.0.0.1")
    yield proc
    stop_group(proc)


@pytest.fixture(scope="session")
def batch_worker(redis_url, real_redis, tmp_path_factory, repository_file, data_dir):
    proc = run_worker(redis_url, real_redis, tmp_path_factory.mktemp("batch-worker"), "batch",
                      model_repository=repository_file, data_dir=data_dir)
    yield proc
    stop_group(proc)


def build_live_app(redis_url, repository_file, data_dir, **settings):
    """The API against a real Redis and Celery, as every integration test builds it; tests
    that submit in bursts must not meet the per-key rate limit unless they ask for one."""
    return create_app({"TESTING": True, "redis_url": redis_url, "model_repository": str(repository_file),
                       "data_dir": str(data_dir), "admin_key": ADMIN_KEY, "rate_limit": TEST_RATE_LIMIT,
                       **settings})


@pytest.fixture
def live_app(redis_url, worker, repository_file, data_dir):
    return build_live_app(redis_url, repository_file, data_dir)


@pytest.fixture(scope="session")
def api_key(real_redis) -> str:
    """A stored key with both scopes; `live_client` and `auth_headers` send it."""
    token, _ = KeyStore(real_redis).create("integration", SCOPES)
    return token


@pytest.fixture
def auth_headers(api_key) -> dict:
    """For `requests` and other HTTP clients outside Flask's test client."""
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def live_client(live_app, api_key):
    return authorize(live_app.test_client(), api_key)
