"""Security against a real Redis: rate limits counted there."""
from __future__ import annotations

import pytest

from app import create_app
from tests.auth import keyed_client

pytestmark = pytest.mark.integration


def test_rate_limits_are_counted_in_redis_and_shared_by_api_processes(redis_url, real_redis):
    # Two apps stand for two API processes: the budget is the key's, not the process's.
    config = {"TESTING": True, "redis_url": redis_url, "rate_limit": "4/minute"}
    first, second = create_app(config), create_app(config)
    client = keyed_client(first)
    other_process = second.test_client()
    other_process.environ_base.update(client.environ_base)
    assert [client.get("/models").status_code for _ in range(2)] == [200, 200]
    assert [other_process.get("/models").status_code for _ in range(2)] == [200, 200]
    limited = other_process.get("/models")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert client.get("/models").status_code == 429
    assert real_redis.keys(f"ferry:ratelimit:*key:{client.api_key.id}*")
