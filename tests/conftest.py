"""Shared fixtures: an app on fakeredis with a recording task sender (Flask's tutorial shape).

`client` sends an API key with both scopes (predict, admin) on every request, so tests
that are not about auth need no headers; for an app a test builds itself, use
`tests.auth.keyed_client(app)`, and `app.test_client()` for a caller without a key."""
from __future__ import annotations

import sys

import fakeredis
import pytest

from app import create_app
from tasks import logs
from tasks.senders import RecordingSender
from tests.auth import TEST_RATE_LIMIT, keyed_client


@pytest.fixture(autouse=True)
def _log_ids_cleared():
    """A test that runs a prediction itself, without Celery's signals around it, leaves its ids
    in the log context; the next test starts without them."""
    yield
    logs.request_id.set("")
    logs.prediction_id.set("")


@pytest.fixture
def redis_server():
    return fakeredis.FakeServer()


@pytest.fixture
def fake_redis(redis_server):
    return fakeredis.FakeRedis(server=redis_server, decode_responses=True)


@pytest.fixture
def sender():
    return RecordingSender()


@pytest.fixture
def app(fake_redis, sender):
    return create_app({"TESTING": True, "redis_url": "redis://unused:1/0", "rate_limit": TEST_RATE_LIMIT},
                      redis_client=fake_redis, sender=sender)


@pytest.fixture
def client(app):
    return keyed_client(app)


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def pytest_terminal_summary(terminalreporter):
    fuzz = sys.modules.get("tests.unit.test_fuzz")
    line = fuzz.summary() if fuzz is not None else None
    if line:
        terminalreporter.write_line(line)
