"""Rate limits per API key, counted in (fake) Redis: 429 with Retry-After in the one error body."""
import pytest

from app import create_app
from tests.auth import keyed_client


@pytest.fixture
def limited_app(fake_redis, sender):
    return create_app({"redis_url": "redis://unused:1/0", "rate_limit": "3/minute"}, redis_client=fake_redis,
                      sender=sender)


def test_past_the_limit_is_429_with_retry_after(limited_app, fake_redis):
    client = keyed_client(limited_app)
    statuses = [client.get("/predictions/" + "0" * 32).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    response = client.post("/models/digits/predictions", json={"input": {"pixels": [0] * 64}})
    assert response.status_code == 429
    assert set(response.json) == {"code", "status", "message", "errors"}
    assert "API key" in response.json["message"] and "3 per 1 minute" in response.json["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 61  # at most the window, rounded up
    # Counted in the API's Redis, under the project's prefix.
    assert fake_redis.keys("ferry:ratelimit:*") and not fake_redis.keys("LIMITS*")


def test_each_key_has_its_own_budget(limited_app):
    first, second = keyed_client(limited_app), keyed_client(limited_app)
    for _ in range(3):
        first.get("/models")
    assert first.get("/models").status_code == 429
    assert second.get("/models").status_code == 200


def test_callers_without_a_key_are_limited_by_address(limited_app):
    anonymous = limited_app.test_client()
    assert [anonymous.get("/models").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert "address" in anonymous.get("/models").json["message"]
    assert keyed_client(limited_app).get("/models").status_code == 200


def test_probes_metrics_and_docs_are_never_limited(limited_app):
    anonymous = limited_app.test_client()
    for path in ("/health", "/health/ready", "/metrics", "/openapi.json", "/docs"):
        assert all(anonymous.get(path).status_code != 429 for _ in range(5)), path


def test_a_bad_limit_fails_at_start(fake_redis, sender):
    with pytest.raises(ValueError, match="FERRY_RATE_LIMIT"):
        create_app({"redis_url": "redis://unused:1/0", "rate_limit": "lots"}, redis_client=fake_redis, sender=sender)


def test_guarded_operations_document_the_429(client):
    submit = client.get("/openapi.json").json["paths"]["/models/{name}/predictions"]["post"]
    assert "Retry-After" in submit["responses"]["429"]["headers"]
