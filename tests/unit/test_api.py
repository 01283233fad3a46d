"""The API against fakeredis, with a sender that records instead of queueing."""
import json
import subprocess
import sys
import threading

import pytest

from models.base import encode_output

from app import create_app
from tasks import records
from tasks.senders import RecordingSender
from tests.auth import keyed_client

PIXELS = [0.0] * 64


def test_models_are_listed_with_schema_and_metrics(client):
    models = client.get("/models").json
    assert [m["name"] for m in models] == ["digits", "minilm", "pi", "textstats"]
    digits = client.get("/models/digits").json
    assert digits["version"] == "1.0.0"
    assert digits["metrics"]["test_accuracy"] >= 0.95 and digits["metrics"]["test_macro_f1"] >= 0.95
    assert "epochs" in json.dumps(digits["training_args"])
    assert digits["input_schema"]["properties"]["pixels"]["maxItems"] == 64


def test_unknown_model_is_404_with_the_error_body(client):
    response = client.get("/models/nope")
    assert response.status_code == 404
    assert set(response.json) == {"code", "status", "message", "errors"}
    assert "nope" in response.json["message"]
    assert client.post("/models/nope/predictions", json={"input": {}}).status_code == 404


def test_submit_queues_and_answers_202_with_location(client, sender, fake_redis):
    response = client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}})
    assert response.status_code == 202
    body = response.json
    assert response.headers["Location"] == f"/predictions/{body['id']}"
    assert body["status"] == "queued" and body["cached"] is False
    assert sender.sent == [{"task": "ferry.predict", "args": [body["id"], "digits", "1.0.0"], "queue": "realtime-cpu",
                            "time_limits": (30.0, 60.0), "countdown": None}]
    stored = fake_redis.hgetall(f"ferry:prediction:{body['id']}")
    assert json.loads(stored["input"]) == {"pixels": PIXELS}
    assert 0 < fake_redis.ttl(f"ferry:prediction:{body['id']}") <= 24 * 3600
    polled = client.get(response.headers["Location"])
    assert polled.status_code == 200 and polled.json["status"] == "queued"
    assert polled.json["timings"]["queued_at"]


def test_cache_hit_answers_200_without_queueing(app, client, sender):
    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("minilm").load({"text": "hello"})
    ferry.cache.set(ferry.cache.key("minilm", "1.0.0", validated), encode_output({"embedding": [0.5]}), ttl_s=60)
    # Same input spelled differently: defaults written out, so the canonical form matches.
    response = client.post("/models/minilm/predictions", json={"input": {"normalize": True, "text": "hello"}})
    assert response.status_code == 200
    assert response.json["cached"] is True and response.json["output"] == {"embedding": [0.5]}
    assert sender.sent == []


def test_a_cache_hit_still_needs_a_key_and_a_valid_body(app, client, sender):
    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("minilm").load({"text": "hello"})
    ferry.cache.set(ferry.cache.key("minilm", "1.0.0", validated), encode_output({"embedding": [0.5]}), ttl_s=60)
    hit = client.post("/models/minilm/predictions", json={"input": {"text": "hello"}})
    assert hit.json == {"model": "minilm", "version": "1.0.0", "status": "succeeded", "cached": True,
                        "output": {"embedding": [0.5]}}
    assert app.test_client().post("/models/minilm/predictions", json={"input": {"text": "hello"}}).status_code == 401
    extra = client.post("/models/minilm/predictions", json={"input": {"text": "hello"}, "colour": "red"})
    assert extra.status_code == 422 and "colour" in json.dumps(extra.json["errors"])
    wrong = client.post("/models/minilm/predictions", json={"input": {"text": "hello", "normalize": "yes"}})
    assert wrong.status_code == 422
    as_text = client.post("/models/minilm/predictions", data='{"input": {"text": "hello"}}', content_type="text/plain")
    assert as_text.status_code == 415
    assert sender.sent == []


def test_other_version_in_cache_is_not_served(app, client, sender):
    ferry = app.extensions["ferry"]
    ferry.cache.set(ferry.cache.key("minilm", "0.9.0", {"text": "hi", "normalize": True}), encode_output({"embedding": [1]}), 60)
    assert client.post("/models/minilm/predictions", json={"input": {"text": "hi"}}).status_code == 202


@pytest.mark.parametrize("body, where", [
    ({"input": {"pixels": [0] * 63}}, ["json", "input", "pixels"]),
    ({"input": {"pixels": [99] + [0] * 63}}, ["json", "input", "pixels"]),
    ({"input": {"pixels": PIXELS, "extra": 1}}, ["json", "input", "extra"]),
    ({"input": {"image": "%%%"}}, ["json", "input", "image"]),
    ({"input": {}}, ["json", "input", "pixels"]),
    ({}, ["json", "input"]),
    ({"input": PIXELS}, ["json", "input"]),
    ({"input": {"pixels": PIXELS}, "priority": 1}, ["json", "priority"]),
])
def test_bad_input_is_422_with_field_level_messages(client, sender, body, where):
    response = client.post("/models/digits/predictions", json=body)
    assert response.status_code == 422, response.json
    errors = response.json["errors"]
    for key in where:
        errors = errors[key]
    assert errors, response.json
    assert response.json["message"]
    assert sender.sent == []


def test_malformed_json_is_400(client):
    response = client.post("/models/minilm/predictions", data='{"input": ', content_type="application/json")
    assert response.status_code == 400
    assert response.json["message"] == "The request body is not valid JSON."


def test_oversized_body_is_413(client):
    response = client.post("/models/minilm/predictions", data="x" * (2 * 1024 * 1024 + 1),
                           content_type="application/json")
    assert response.status_code == 413
    assert "2097152 bytes" in response.json["message"]


def test_unknown_prediction_is_404(client):
    assert client.get("/predictions/" + "0" * 32).status_code == 404
    assert client.get("/predictions/not-an-id").status_code == 404


def test_failed_prediction_shows_error_not_traceback(client, app):
    store = app.extensions["ferry"].store
    record = store.create(model="minilm", version="1.0.0", queue="realtime-cpu",
                          validated_input={"text": "x", "normalize": True}, cache_key="k", owner=client.api_key.id)
    store.update(record["id"], records.FAILED, error="RuntimeError: boom", finished_at="1.0")
    body = client.get(f"/predictions/{record['id']}").json
    assert body["status"] == "failed" and body["error"] == "RuntimeError: boom" and body["output"] is None


def test_prefer_wait_answers_200_when_done_in_time(fake_redis):
    def finish_soon(prediction_id, model, version):
        def finish():
            store = records.PredictionStore(fake_redis)
            store.update(prediction_id, records.RUNNING, started_at="1.0")
            record = store.get(prediction_id)
            assert record["waiter"]  # the API process waiting for it
            store.update(prediction_id, records.SUCCEEDED, record=record, output='{"label": 7}', finished_at="2.0")
        threading.Timer(0.2, finish).start()

    app = create_app({"redis_url": "redis://unused:1/0"}, redis_client=fake_redis,
                     sender=RecordingSender(on_send=finish_soon))
    response = keyed_client(app).post("/models/digits/predictions", json={"input": {"pixels": PIXELS}},
                                      headers={"Prefer": "wait=5"})
    assert response.status_code == 200
    assert response.json["output"] == {"label": 7}
    assert response.json["timings"]["run_ms"] == 1000.0
    assert response.headers["Preference-Applied"] == "wait=5"


@pytest.mark.parametrize("prefer, seconds", [
    ("wait=5", 5.0), ("respond-async, wait=0.2", 0.2), ('wait="3"', 3.0), ("wait=4; x", 4.0), ("WAIT = 2 ", 2.0),
    ("wait=100", 30.0),  # capped
    ("wait=1e9", 0.0), ('wait="3', 0.0), ("wait=abc", 0.0), ("await=3", 0.0), ("", 0.0),  # not a wait: ignored
])
def test_prefer_wait_is_read_as_rfc_7240_writes_it(prefer, seconds):
    from app.resources.predictions import wait_asked

    assert wait_asked(prefer, 30.0) == seconds


def test_prefer_wait_falls_back_to_202(client):
    response = client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}},
                           headers={"Prefer": "respond-async, wait=0.2"})
    assert response.status_code == 202 and "Location" in response.headers


def test_redis_down_is_503_with_retry_after(redis_server, client):
    redis_server.connected = False
    for response in (client.post("/models/minilm/predictions", json={"input": {"text": "hi"}}),
                     client.get("/predictions/" + "a" * 32)):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert "Redis" in response.json["message"]
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json["checks"]["redis"].startswith("unreachable")
    assert client.get("/health").status_code == 200


def test_broker_failure_leaves_no_record(fake_redis):
    from kombu.exceptions import OperationalError

    class DownSender(RecordingSender):
        def message(self, *args, **kwargs):
            raise OperationalError("broker down")

    app = create_app({"redis_url": "redis://unused:1/0"}, redis_client=fake_redis, sender=DownSender())
    response = keyed_client(app).post("/models/minilm/predictions", json={"input": {"text": "hi"}})
    assert response.status_code == 503
    assert fake_redis.keys("ferry:prediction:*") == []


def test_readiness_needs_a_live_worker_per_queue(client, fake_redis):
    assert client.get("/health/ready").json["checks"]["queues"] == {"realtime-cpu": "no live worker"}
    import time
    fake_redis.hset("ferry:workers", "w1", json.dumps({"queues": ["realtime-cpu"], "last_seen": time.time()}))
    assert client.get("/health/ready").status_code == 200
    fake_redis.hset("ferry:workers", "w1", json.dumps({"queues": ["realtime-cpu"], "last_seen": time.time() - 60}))
    assert client.get("/health/ready").status_code == 503


def test_openapi_and_offline_docs(client):
    spec = client.get("/openapi.json").json
    assert "/models/{name}/predictions" in spec["paths"]
    page = client.get("/docs")
    assert page.status_code == 200 and b"/docs/static/swagger-ui-bundle.js" in page.data
    assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_unexpected_errors_are_500_without_traceback(app, client, monkeypatch):
    monkeypatch.setattr(app.extensions["ferry"].registry, "specs", lambda: 1 / 0)
    response = client.get("/models")
    assert response.status_code == 500
    assert "Traceback" not in response.get_data(as_text=True)
    assert set(response.json) == {"code", "status", "message", "errors"}


def test_api_process_never_imports_torch():
    script = (
        "import sys, fakeredis\n"
        "from app import create_app\n"
        "from tasks.senders import RecordingSender\n"
        "app = create_app({'redis_url': 'redis://x:1/0'}, redis_client=fakeredis.FakeRedis(decode_responses=True),"
        " sender=RecordingSender())\n"
        "from tests.auth import keyed_client\n"
        "c = keyed_client(app)\n"
        "assert c.post('/models/digits/predictions', json={'input': {'pixels': [0]*64}}).status_code == 202\n"
        "assert c.get('/models').status_code == 200\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("data, content_type, status", [
    ('{"input": {"text": "hi"}}', "application/x-www-form-urlencoded", 415),
    ('{"input": {"text": "hi"}}', "text/plain", 415),
    ('{"input": {"pixels": [1' + "0" * 5000 + "]}}", "application/json", 400),
    ('{"input": ' + "[" * 100000 + "]" * 100000 + "}", "application/json", 400),
    ('[1, 2]', "application/json", 422),
    ('null', "application/json", 422),
])
def test_malformed_bodies_are_4xx_never_500(client, data, content_type, status):
    response = client.post("/models/digits/predictions", data=data, content_type=content_type)
    assert response.status_code == status, response.json
    assert set(response.json) == {"code", "status", "message", "errors"}


@pytest.mark.parametrize("text_input, field", [
    ({"text": "\ud800"}, "text"),
    ({"text": "hi", "normalize": "yes"}, "normalize"),
    ({"text": "hi", "normalize": 1}, "normalize"),
])
def test_strict_field_types(client, text_input, field):
    response = client.post("/models/minilm/predictions", json={"input": text_input})
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]["input"]


def test_number_strings_are_not_numbers(client):
    response = client.post("/models/digits/predictions", json={"input": {"pixels": ["3"] * 64}})
    assert response.status_code == 422


def test_unknown_model_is_404_even_with_a_bad_body(client):
    assert client.post("/models/nope/predictions", data="[]", content_type="application/json").status_code == 404


def test_prefer_wait_is_bounded_per_process(app, client):
    waiters = app.extensions["ferry"].waiters
    held = [waiters.acquire(blocking=False) for _ in range(4)]
    assert all(held)
    try:
        response = client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}},
                               headers={"Prefer": "wait=30"})
        assert response.status_code == 202  # at once: every waiting slot is taken
    finally:
        for _ in held:
            waiters.release()


def test_redis_lost_during_a_wait_still_answers_202(app, client, monkeypatch):
    import redis as redis_lib

    def broken_wait(*args, **kwargs):
        raise redis_lib.ConnectionError("gone")

    monkeypatch.setattr(records.Watch, "wait", broken_wait)
    response = client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}},
                           headers={"Prefer": "wait=5"})
    assert response.status_code == 202 and response.headers["Location"].startswith("/predictions/")


def test_swagger_ui_calls_no_outside_validator(client):
    assert b'"validatorUrl": null' in client.get("/docs").data


def test_a_chunked_body_over_the_limit_is_413_not_400(client):
    import io

    def chunked(body: bytes):
        return client.post("/models/minilm/predictions", input_stream=io.BytesIO(body),
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})

    huge = chunked(b'{"input": {"text": "' + b"x" * (3 * 1024 * 1024) + b'"}}')
    assert huge.status_code == 413 and "2097152 bytes" in huge.json["message"]
    assert chunked(b'{"input": {"text": "chunked and small"}}').status_code == 202


def test_a_422_names_what_was_invalid(client):
    query = client.get("/models/pi/logs?limit=abc")
    assert query.status_code == 422 and query.json["message"] == "The query string is invalid; `errors` says where."
    body = client.post("/models", json={"name": "Bad Name", "kind": "http", "version": "1", "url": "http://x/y",
                                        "inputs": {"x": {"type": "number"}}})
    assert body.status_code == 422 and body.json["message"] == "The request body is invalid; `errors` says where."
    assert "lowercase letters" in body.json["errors"]["json"]["name"][0]
