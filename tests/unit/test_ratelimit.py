"""Rate limits per API key, counted in (fake) Redis: 429 with Retry-After in the one error body."""
import pytest

from app import create_app
from tests.auth import clear_of_a_minute_edge, keyed_client


@pytest.fixture
def limited_app(fake_redis, sender):
    app = create_app({"redis_url": "redis://unused:1/0", "rate_limit": "3/minute"}, redis_client=fake_redis,
                     sender=sender)
    clear_of_a_minute_edge()
    return app


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


def _cache(app, text="hello"):
    from models.base import encode_output

    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("minilm").load({"text": text})
    ferry.cache.set(ferry.cache.key("minilm", "1.0.0", validated), encode_output({"embedding": [0.5]}), ttl_s=60)


def test_cache_hits_and_misses_spend_the_same_budget(limited_app):
    """A cache hit is counted in its cache read's round trip; it is still counted, once."""
    _cache(limited_app)
    client = keyed_client(limited_app)
    statuses = [client.post("/models/minilm/predictions", json={"input": {"text": "hello"}}).status_code
                for _ in range(2)]
    statuses.append(client.post("/models/minilm/predictions", json={"input": {"text": "a miss"}}).status_code)
    statuses.append(client.post("/models/minilm/predictions", json={"input": {"text": "hello"}}).status_code)
    assert statuses == [200, 200, 202, 429]


def test_submits_refused_before_the_view_are_counted(limited_app):
    """Unknown models, missing scopes, bad bodies and idempotent submits spend budget too."""
    _cache(limited_app)
    readonly = keyed_client(limited_app, scopes=["admin"])
    assert [readonly.post("/models/minilm/predictions", json={"input": {"text": "hello"}}).status_code
            for _ in range(4)] == [403, 403, 403, 429]
    client = keyed_client(limited_app)
    assert client.post("/models/nope/predictions", json={"input": {}}).status_code == 404
    assert client.post("/models/minilm/predictions", json={"input": {"text": 5}}).status_code == 422
    idempotent = client.post("/models/minilm/predictions", json={"input": {"text": "hello"}},
                             headers={"Idempotency-Key": "k1"})
    assert idempotent.status_code == 200
    assert client.post("/models/minilm/predictions", json={"input": {"text": "hello"}}).status_code == 429


def test_every_limit_holds_and_a_refused_request_spends_nothing(fake_redis):
    from app.ratelimit import RateLimited, RateLimiter

    clear_of_a_minute_edge()
    limiter = RateLimiter(fake_redis, "ferry:", "2/minute;3/hour")
    limiter.hit("key:a")
    limiter.hit("key:a")
    with pytest.raises(RateLimited) as refused:
        limiter.hit("key:a")
    assert str(refused.value.limit) == "2 per 1 minute" and 0 < refused.value.retry_after_s <= 60
    # Refusals consumed nothing: the hour's budget still has one left for another minute.
    assert fake_redis.hget("ferry:ratelimit:key:a", "2.c") == "2"


def test_processes_share_one_budget(fake_redis, sender):
    """Two API processes (two apps on one Redis) count against the same budget."""
    from app import create_app

    config = {"redis_url": "redis://unused:1/0", "rate_limit": "3/minute"}
    first = create_app(config, redis_client=fake_redis, sender=sender)
    second = create_app(config, redis_client=fake_redis, sender=sender)
    clear_of_a_minute_edge()
    token, _ = first.extensions["ferry"].keys.create("shared", ["predict"])
    a = first.test_client()
    b = second.test_client()
    for client in (a, b):
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    assert [a.get("/models").status_code, b.get("/models").status_code, a.get("/models").status_code,
            b.get("/models").status_code] == [200, 200, 200, 429]


def test_the_counters_never_reach_the_append_only_file(tmp_path):
    """Counting writes nothing that `appendfsync always` would make a request wait for."""
    import redis

    from app.ratelimit import RateLimiter
    from tests.processes import RedisServer

    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.set("ferry:cache:x", "cached")
        limiter = RateLimiter(client, "ferry:", "100/second;1000/minute")
        limiter.hit("key:warm", also_get="ferry:cache:x")  # loads the script
        size = client.info("persistence")["aof_current_size"]
        assert [limiter.hit("key:a", also_get="ferry:cache:x") for _ in range(20)] == ["cached"] * 20
        assert client.info("persistence")["aof_current_size"] == size
        # The minute's counter: twenty hits may straddle its edge, never two of them.
        counters = client.hgetall("ferry:ratelimit:key:a")
        assert int(counters["2.c"]) + int(counters["2.p"]) == 20
    finally:
        server.stop()
