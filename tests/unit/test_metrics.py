"""GET /metrics: API counters, worker histograms through Redis, queue depths."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.base import encode_output
from models.declaration import parse_repository
from models.registry import Registry
from tasks.context import WorkerContext
from tasks.predict import run_prediction
from tasks.settings import Settings
from tests.fake_models import declaration

PIXELS = [0.0] * 64


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_route_and_status(client):
    before = scrape(client)
    client.get("/models/digits")
    client.get("/models/nope")
    client.get("/no/such/path")
    after = scrape(client)
    route = {"method": "GET", "route": "/models/<name>"}
    assert value(after, "ferry_http_requests_total", status="200", **route) - \
        value(before, "ferry_http_requests_total", status="200", **route) == 1
    assert value(after, "ferry_http_requests_total", status="404", **route) - \
        value(before, "ferry_http_requests_total", status="404", **route) == 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "ferry_http_requests_total", **unmatched) - value(before, "ferry_http_requests_total",
                                                                          **unmatched) == 1
    latency = "ferry_http_request_duration_seconds_count"
    assert value(after, latency, **route) - value(before, latency, **route) == 2


def test_made_up_methods_are_counted_as_other(client):
    before = scrape(client)
    for method in ("QWERTY1", "ZZZ123", "ABCDEFGHIJ"):
        client.open("/health", method=method)
    after = scrape(client)
    assert not any(labels and dict(labels).get("method", "GET") not in
                   ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other") for _, labels in after)
    other = {"method": "other", "route": "unmatched", "status": "405"}
    assert value(after, "ferry_http_requests_total", **other) - value(before, "ferry_http_requests_total",
                                                                      **other) == 3


def test_cache_hits_misses_and_submits_by_model(app, client):
    before = scrape(client)
    client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}})
    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("minilm").load({"text": "cached"})
    ferry.cache.set(ferry.cache.key("minilm", "1.0.0", validated), encode_output({"embedding": [1.0]}), ttl_s=60)
    client.post("/models/minilm/predictions", json={"input": {"text": "cached"}})
    after = scrape(client)

    def delta(name, model):
        return value(after, name, model=model) - value(before, name, model=model)

    assert delta("ferry_cache_misses_total", "digits") == 1
    assert delta("ferry_predictions_submitted_total", "digits") == 1
    assert delta("ferry_cache_hits_total", "minilm") == 1
    assert delta("ferry_cache_misses_total", "minilm") == 0
    assert delta("ferry_predictions_submitted_total", "minilm") == 0


def test_queue_depth_counts_every_priority_list(client, fake_redis):
    fake_redis.rpush("realtime-cpu", "m1", "m2")
    fake_redis.rpush("realtime-cpu\x06\x163", "m3")
    fake_redis.rpush("batch", "b1")
    client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}})
    samples = scrape(client)
    assert value(samples, "ferry_queue_depth", queue="realtime-cpu") == 3
    assert value(samples, "ferry_queue_depth", queue="batch") == 1
    assert value(samples, "ferry_pending_predictions", model="digits", version="1.0.0") == 1
    assert value(samples, "ferry_pending_predictions", model="minilm", version="1.0.0") == 0
    assert value(samples, "ferry_redis_up") == 1


@pytest.fixture
def worker_ctx(fake_redis):
    specs = parse_repository({"models": [declaration("echo", "Echo", batching={"max_batch_size": 4}),
                                                 declaration("broken", "Broken")]})
    return WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))


def submit(ctx, model: str, x: float) -> str:
    return ctx.store.create(model=model, version="1", queue="realtime-cpu", validated_input={"x": x},
                            cache_key=ctx.cache.key(model, "1", {"x": x}))["id"]


def test_worker_histograms_and_outcomes_reach_the_api_through_redis(client, worker_ctx):
    # Three echo predictions queued before the worker starts: one batch of three.
    ids = [submit(worker_ctx, "echo", x) for x in (1.0, 2.0, 3.0)]
    run_prediction(ids[0], worker_ctx)
    run_prediction(submit(worker_ctx, "broken", 1.0), worker_ctx)
    samples = scrape(client)
    assert value(samples, "ferry_predictions_completed_total", model="echo") == 3
    assert value(samples, "ferry_predictions_failed_total", model="echo") == 0
    assert value(samples, "ferry_predictions_failed_total", model="broken") == 1
    assert value(samples, "ferry_worker_batch_size_count", model="echo") == 1
    assert value(samples, "ferry_worker_batch_size_sum", model="echo") == 3
    assert value(samples, "ferry_worker_batch_size_bucket", model="echo", le="2.0") == 0
    assert value(samples, "ferry_worker_batch_size_bucket", model="echo", le="4.0") == 1
    assert value(samples, "ferry_worker_batch_size_bucket", model="echo", le="+Inf") == 1
    assert value(samples, "ferry_worker_queue_wait_seconds_count", model="echo") == 3
    assert value(samples, "ferry_worker_queue_wait_seconds_bucket", model="echo", le="+Inf") == 3
    assert value(samples, "ferry_worker_predict_duration_seconds_count", model="echo") == 1
    assert value(samples, "ferry_worker_predict_duration_seconds_sum", model="echo") > 0


def test_api_metrics_are_served_while_redis_is_away(client, redis_server):
    client.get("/health")
    redis_server.connected = False  # fakeredis raises ConnectionError for every command
    samples = scrape(client)
    assert value(samples, "ferry_redis_up") == 0
    assert value(samples, "ferry_http_requests_total", method="GET", route="/health", status="200") >= 1
