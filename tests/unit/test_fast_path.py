"""Plain submits answered beneath Flask (app/fast_path.py): a cache hit or a new prediction
is answered without Flask, byte for byte as Flask answers it, with the same rate limit,
metrics, request log, popularity count and record; everything else reaches Flask with its
body intact, counted once."""
from __future__ import annotations

import json
import re
import threading

import pytest

from app import create_app
from models.base import encode_output
from tasks import logs, records
from tasks.senders import RecordingSender
from tests.auth import clear_of_a_minute_edge, keyed_client
from tests.unit.test_metrics import scrape, value

PATH = "/models/digits/predictions"
PIXELS = [0, 0, 9, 16, 16, 10, 0, 0] * 8
BODY = json.dumps({"input": {"pixels": PIXELS}}).encode()
OUTPUT = {"label": 3, "probabilities": [0.1] * 10}


def _cache(app, pixels=PIXELS) -> str:
    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("digits").load({"pixels": pixels})
    key = ferry.cache.key("digits", "1.0.0", validated)
    ferry.cache.set(key, encode_output(OUTPUT), ttl_s=60)
    return key


def _post(client, body: bytes = BODY, path: str = PATH, content_type: str = "application/json", **headers):
    return client.post(path, data=body, content_type=content_type, headers=headers)


@pytest.fixture
def flask_calls(app):
    """The requests that reached Flask (through the layer the app factory installs)."""
    return _count_flask(app)


def _count_flask(app) -> list[str]:
    layer, calls = app.wsgi_app, []
    flask = layer.flask

    def counted(environ, start_response):
        calls.append(environ["PATH_INFO"])
        return flask(environ, start_response)

    layer.flask = counted
    return calls


def _flask_alone(app, monkeypatch):
    """Send what follows straight to Flask, as before the layer existed."""
    monkeypatch.setattr(app, "wsgi_app", app.wsgi_app.flask)


def test_a_hit_is_answered_beneath_flask_byte_for_byte(app, client, flask_calls, monkeypatch):
    _cache(app)
    fast = _post(client, **{"X-Request-ID": "req-1"})
    again = _post(client)  # remembered: not validated again
    assert flask_calls == []
    assert again.headers["X-Request-ID"] != fast.headers["X-Request-ID"] and len(again.headers["X-Request-ID"]) == 32
    _flask_alone(app, monkeypatch)
    flask = _post(client, **{"X-Request-ID": "req-1"})
    assert (fast.status, list(fast.headers), fast.get_data()) == (flask.status, list(flask.headers), flask.get_data())
    assert again.get_data() == fast.get_data()
    assert fast.json == {"model": "digits", "version": "1.0.0", "status": "succeeded", "cached": True,
                         "output": OUTPUT}


def _same_but_ids(fast, flask, store) -> None:
    """Two answers to submits of different inputs, and their records, alike but for what must differ."""
    ids = fast.json["id"], flask.json["id"]
    assert fast.headers["Location"] == f"/predictions/{ids[0]}" and flask.headers["Location"] == f"/predictions/{ids[1]}"
    fast.headers["Location"] = flask.headers["Location"]
    assert (fast.status, list(fast.headers)) == (flask.status, list(flask.headers))
    assert fast.get_data().replace(ids[0].encode(), ids[1].encode()) == flask.get_data()
    made = [store.get(prediction_id) for prediction_id in ids]
    for record in made:
        for differs in ("id", "input", "cache_key", "queued_at"):
            record.pop(differs)
    assert made[0] == made[1] and made[0]["request_id"] == "req-1"


def test_a_new_prediction_is_queued_beneath_flask_as_flask_queues_it(app, client, flask_calls, sender, monkeypatch):
    fast = _post(client, **{"X-Request-ID": "req-1"})
    assert fast.status_code == 202 and fast.json["status"] == "queued" and flask_calls == []
    _flask_alone(app, monkeypatch)
    body = json.dumps({"input": {"pixels": [1] + PIXELS[1:]}}).encode()
    flask = _post(client, body, **{"X-Request-ID": "req-1"})
    # Every prediction has its message; the queue-time in the body is the only other difference.
    assert [sent["args"][0] for sent in sender.sent] == [fast.json["id"], flask.json["id"]]
    flask.set_data(flask.get_data().replace(
        flask.json["timings"]["queued_at"].encode(), fast.json["timings"]["queued_at"].encode()))
    _same_but_ids(fast, flask, app.extensions["ferry"].store)


def test_a_waited_prediction_is_answered_beneath_flask_as_flask_answers_it(fake_redis, monkeypatch):
    def finish_soon(prediction_id, model, version):
        def finish():
            store = records.PredictionStore(fake_redis)
            record = store.get(prediction_id)
            store.update(prediction_id, records.SUCCEEDED, record=record, output='{"label": 7}', started_at="1.0",
                         queued_at="0.5", finished_at="2.0")
        threading.Timer(0.05, finish).start()

    app = create_app({"redis_url": "redis://unused:1/0"}, redis_client=fake_redis,
                     sender=RecordingSender(on_send=finish_soon))
    calls, client = _count_flask(app), keyed_client(app)
    fast = _post(client, **{"X-Request-ID": "req-1", "Prefer": "wait=5"})
    assert (fast.status_code, fast.json["output"], fast.headers["Preference-Applied"]) == (200, {"label": 7}, "wait=5")
    assert calls == []
    _flask_alone(app, monkeypatch)
    body = json.dumps({"input": {"pixels": [1] + PIXELS[1:]}}).encode()
    _same_but_ids(fast, _post(client, body, **{"X-Request-ID": "req-1", "Prefer": "wait=5"}),
                  app.extensions["ferry"].store)


def test_a_request_id_that_is_not_sane_is_replaced_as_flask_replaces_it(app, client, flask_calls):
    _cache(app)
    answer = _post(client, **{"X-Request-ID": "bad id; forged=1"})
    assert flask_calls == []
    assert len(answer.headers["X-Request-ID"]) == 32


def test_everything_else_reaches_flask_with_its_body(app, client, flask_calls):
    _cache(app)
    readonly = keyed_client(app, scopes=["admin"])
    cases = [
        # An Idempotency-Key is checked by the view, which still answers from the cache.
        (_post(client, **{"Idempotency-Key": "k1"}), 200),
        (_post(app.test_client()), 401),
        (_post(app.test_client(), Authorization="Bearer ferry_unknown"), 401),
        (_post(readonly), 403),
        (_post(client, content_type="text/plain"), 415),
        (_post(client, path="/models/nope/predictions"), 404),
        (_post(client, body=json.dumps({"input": {"pixels": PIXELS}, "version": "9"}).encode()), 404),
        (_post(client, body=json.dumps({"input": {"pixels": PIXELS[:10]}}).encode()), 422),
        (_post(client, body=json.dumps({"input": {"pixels": PIXELS}, "extra": 1}).encode()), 422),
        (_post(client, body=b"{not json"), 400),
    ]
    assert [answer.status_code for answer, _ in cases] == [status for _, status in cases]
    assert len(flask_calls) == len(cases)
    assert cases[0][0].json["output"] == OUTPUT


def test_a_submit_that_joins_one_in_flight_goes_to_flask_counted_once(fake_redis, sender):
    limited = create_app({"redis_url": "redis://unused:1/0", "rate_limit": "2/minute"}, redis_client=fake_redis,
                         sender=sender)
    calls, client = _count_flask(limited), keyed_client(limited)
    clear_of_a_minute_edge()
    first = _post(client)
    joined = _post(client)
    assert (first.status_code, joined.status_code) == (202, 202) and joined.json["id"] == first.json["id"]
    assert len(calls) == 1 and len(sender.sent) == 1
    # Two submits, two counted: a third is refused.
    assert _post(client, body=json.dumps({"input": {"pixels": [2] + PIXELS[1:]}}).encode()).status_code == 429


def test_a_body_over_the_size_limit_is_left_to_flask(app, client, flask_calls):
    _cache(app)
    _post(client)
    app.config["MAX_CONTENT_LENGTH"] = len(BODY) - 1
    assert _post(client).status_code == 413
    assert len(flask_calls) == 1


@pytest.fixture
def limited_app(fake_redis, sender):
    app = create_app({"redis_url": "redis://unused:1/0", "rate_limit": "3/minute"}, redis_client=fake_redis,
                     sender=sender)
    clear_of_a_minute_edge()
    return app


def test_a_hit_beneath_flask_spends_the_budget_once_and_the_429_is_flasks(limited_app, monkeypatch):
    _cache(limited_app)
    calls = _count_flask(limited_app)
    client = keyed_client(limited_app)
    statuses = [_post(client).status_code for _ in range(3)]
    refused = _post(client, **{"X-Request-ID": "req-3"})
    assert statuses + [refused.status_code] == [200, 200, 200, 429]
    assert len(calls) == 1  # the refusal
    _flask_alone(limited_app, monkeypatch)
    flask = _post(client, **{"X-Request-ID": "req-3"})

    def seconds_apart(answer):  # the two may straddle a second of Retry-After
        body = answer.get_json()  # parsed anew at each call: the message is replaced in this copy
        body["message"] = re.sub(r"\d+ s\.", "N s.", body["message"])
        return answer.status, [name for name, _ in answer.headers], answer.headers["X-Request-ID"], body

    assert "from this API key" in refused.json["message"]
    assert seconds_apart(refused) == seconds_apart(flask)


def test_an_expired_answer_is_queued_counted_once(limited_app, sender):
    key = _cache(limited_app)
    calls = _count_flask(limited_app)
    client = keyed_client(limited_app)
    assert _post(client).status_code == 200
    limited_app.extensions["ferry"].redis.delete(key)
    miss = _post(client)
    assert miss.status_code == 202 and miss.json["cached"] is False and len(sender.sent) == 1
    _cache(limited_app)
    # Hit, miss and this one spend the budget of three; had the miss been counted twice, 429.
    assert [_post(client).status_code, _post(client).status_code] == [200, 429]
    assert len(calls) == 1  # the refusal


def test_a_hit_beneath_flask_is_counted_in_metrics_request_log_and_popularity(app, client, flask_calls,
                                                                             monkeypatch):
    _cache(app)
    _post(client)
    ferry = app.extensions["ferry"]
    before = scrape(client)
    seen = []
    add = ferry.popularity.add
    monkeypatch.setattr(ferry.popularity, "add", lambda *args: (seen.append(logs.request_id.get()), add(*args)))
    _post(client, **{"X-Request-ID": "req-2"})
    after = scrape(client)
    assert flask_calls == ["/metrics", "/metrics"]
    route = {"method": "POST", "route": "/models/<name>/predictions"}
    for name, labels in (("ferry_http_requests_total", {**route, "status": "200"}),
                         ("ferry_http_request_duration_seconds_count", route),
                         ("ferry_cache_hits_total", {"model": "digits"})):
        assert value(after, name, **labels) - value(before, name, **labels) == 1, name
    # Log lines written during the hit carry its id, and only during it.
    assert seen == ["req-2"] and logs.request_id.get() == ""
    ferry.request_log.flush()
    newest = ferry.request_log.recent("digits", 1)[0]
    assert (newest["request_id"], newest["cache_hit"], newest["status"]) == ("req-2", True, "succeeded")
    ferry.popularity.flush()
    popular = ferry.redis.zrange("ferry:popular:digits:1.0.0", 0, -1, withscores=True)
    assert [score for _, score in popular] == [2.0]


def test_redis_away_is_flasks_503(app, client, flask_calls, redis_server):
    _cache(app)
    _post(client)
    redis_server.connected = False
    answer = _post(client)
    assert answer.status_code == 503 and "Redis" in answer.json["message"] and answer.headers["Retry-After"]
    assert flask_calls == [PATH]


def test_a_remembered_body_is_not_answered_for_a_model_that_changed(fake_redis, tmp_path):
    """A new default version (or a re-registration) resolves the body to another spec: it
    is validated afresh, against what is served now, and queued for that."""
    from tests.unit.test_runtime_models import iris, make_app

    repository = tmp_path / "repository.yaml"
    repository.write_text("models: []\n")
    api = make_app(fake_redis, repository)
    calls = _count_flask(api)
    client = keyed_client(api)
    assert client.post("/models", json=iris("1")).status_code == 201
    ferry = api.extensions["ferry"]
    spec = ferry.registry.get("iris")
    ferry.cache.set(ferry.cache.key("iris", spec.cache_version, {"petal_length": 1.0}), '{"species":"v1"}', 60)
    body = json.dumps({"input": {"petal_length": 1}}).encode()
    path = "/models/iris/predictions"
    assert [_post(client, body, path).json["output"] for _ in range(2)] == [{"species": "v1"}] * 2
    answered_beneath = len(calls)
    assert client.post("/models", json=iris("2", default=True)).status_code == 201
    now = _post(client, body, path)
    assert (now.status_code, now.json["version"]) == (202, "2")
    assert len(calls) == answered_beneath + 1  # the registration


def test_a_bug_beneath_flask_is_answered_as_flask_answers_one(app, client, flask_calls, monkeypatch):
    from app.resources import predictions

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(predictions, "queue_prediction", broken)
    fast = _post(client, **{"X-Request-ID": "req-9"})
    assert flask_calls == []
    _flask_alone(app, monkeypatch)
    flask = _post(client, **{"X-Request-ID": "req-9"})
    assert fast.status_code == 500 and "unexpected" in fast.json["message"]
    assert (fast.status, list(fast.headers), fast.get_data()) == (flask.status, list(flask.headers), flask.get_data())


def test_a_submit_handed_on_to_flask_keeps_the_request_id_chosen_beneath(fake_redis, sender):
    limited = create_app({"redis_url": "redis://unused:1/0", "queue_limit": 1}, redis_client=fake_redis,
                         sender=sender)
    calls, client = _count_flask(limited), keyed_client(limited)
    assert _post(client).status_code == 202
    seen = []
    layer = limited.wsgi_app
    flask = layer.flask
    layer.flask = lambda environ, start_response: (seen.append(environ["ferry.request_id"]),
                                                   flask(environ, start_response))[1]
    full = _post(client, body=json.dumps({"input": {"pixels": [3] + PIXELS[1:]}}).encode(),
                 **{"X-Request-ID": "not sane!"})
    assert full.status_code == 503 and len(calls) == 1
    assert full.headers["X-Request-ID"] == seen[0] and len(seen[0]) == 32
