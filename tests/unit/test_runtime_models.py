"""Registering http models at run time, model versions, removal, and each model's request log,
through the API on fakeredis (a second app on the same Redis stands for another process)."""
from __future__ import annotations

import pytest
import yaml

from app import create_app
from app.keys import PREDICT
from tasks import records
from tasks.context import WorkerContext
from tasks.predict import run_prediction
from tasks.senders import RecordingSender
from tasks.settings import Settings
from tests.auth import TEST_RATE_LIMIT, keyed_client
from tests.fake_models import declaration

HOSTS = "models.internal:8100,127.0.0.1"


def iris(version="1", url="http://models.internal:8100/v1/predict", **extra) -> dict:
    return {"name": "iris", "kind": "http", "version": version, "url": url,
            "inputs": {"petal_length": {"type": "number", "required": True, "min": 0, "max": 20}}, **extra}


def without_url() -> dict:
    return {key: value for key, value in iris().items() if key != "url"}


@pytest.fixture
def repository(tmp_path):
    path = tmp_path / "repository.yaml"
    path.write_text(yaml.safe_dump({"models": [
        declaration("echo", "Echo", version="1"),
        declaration("echo", "Echo", version="2", default=True),
    ]}))
    return path


def make_app(fake_redis, repository, sender=None, **settings):
    return create_app({"TESTING": True, "redis_url": "redis://unused:1/0", "rate_limit": TEST_RATE_LIMIT,
                       "model_repository": str(repository), "http_model_hosts": HOSTS, **settings},
                      redis_client=fake_redis, sender=sender or RecordingSender())


@pytest.fixture
def api(fake_redis, repository):
    return make_app(fake_redis, repository)


@pytest.fixture
def client(api):
    return keyed_client(api)


def test_an_http_model_registered_at_run_time_is_served_by_every_process_at_once(client, fake_redis, repository):
    other = keyed_client(make_app(fake_redis, repository))
    assert other.get("/models/iris").status_code == 404  # that process now knows there is no iris
    response = client.post("/models", json=iris())
    assert response.status_code == 201, response.json
    assert response.headers["Location"].endswith("/models/iris")
    assert response.json["source"] == "runtime" and "url" not in response.json, "internal addresses stay private"
    shown = other.get("/models/iris")
    assert shown.status_code == 200 and shown.json["versions"] == ["1"]
    submitted = other.post("/models/iris/predictions", json={"input": {"petal_length": 1.4}})
    assert submitted.status_code == 202 and submitted.json["version"] == "1"
    assert "iris" in [model["name"] for model in other.get("/models").json]


@pytest.mark.parametrize("declaration_, status, words", [
    (iris(url="http://elsewhere.example/predict"), 403, "not among the hosts"),
    (iris(url="http://models.internal:9999/predict"), 403, "not among the hosts"),
    (iris(url="http://user:secret@models.internal:8100/predict"), 422, "credentials"),
    (iris(url="file:///etc/passwd"), 422, "url"),
    ({**without_url(), "kind": "subprocess", "command": ["sh", "-c", "touch /tmp/owned"]}, 422, "Only http models"),
    ({**without_url(), "kind": "torch", "entrypoint": "os:system"}, 422, "Only http models"),
    (iris(name="echo"), 409, "repository file"),
    ({**iris(), "inputs": {}}, 422, "inputs"),
    (iris(artifacts="/etc"), 422, "artifacts"),
    # Declarations no worker could serve as asked.
    ({**iris(), "inputs": {"x": {"type": "number", "min": 5, "max": 1}}}, 422, "no input would be accepted"),
    ({**iris(), "inputs": {"x": {"type": "number", "default": "abc"}}}, 422, "default is not a valid value"),
    ({**iris(), "inputs": {"x": {"type": "number", "max": 1, "default": 2}}}, 422, "default is not a valid value"),
    (iris(queue="nobody-consumes"), 422, "Queue 'nobody-consumes' is not a real-time queue"),
    (iris(queue="batch"), 422, "Queue 'batch' is not a real-time queue"),
    (iris(queue="realtime-sweeps"), 422, "Queue 'realtime-sweeps' is not a real-time queue"),
    (iris(timeout_s=100000), 422, "FERRY_VISIBILITY_TIMEOUT_S"),
])
def test_registrations_outside_what_the_operator_allows_are_refused(client, declaration_, status, words):
    response = client.post("/models", json=declaration_)
    assert response.status_code == status, response.json
    assert words in str(response.json)
    assert client.get("/models/iris").status_code == 404


def test_registration_is_off_until_the_operator_allows_hosts(fake_redis, repository):
    closed = keyed_client(make_app(fake_redis, repository, http_model_hosts=""))
    response = closed.post("/models", json=iris())
    assert response.status_code == 403 and "FERRY_HTTP_MODEL_HOSTS" in response.json["message"]


def test_registering_and_removing_models_needs_the_admin_scope(api, client):
    caller = keyed_client(api, scopes=[PREDICT], name="caller")
    assert caller.post("/models", json=iris()).status_code == 403
    assert client.post("/models", json=iris()).status_code == 201
    assert caller.delete("/models/iris").status_code == 403
    assert api.test_client().delete("/models/iris").status_code == 401


def test_a_second_version_and_the_default(client):
    assert client.post("/models", json=iris("1")).status_code == 201
    assert client.post("/models", json=iris("1")).status_code == 409
    assert client.post("/models", json=iris("2", url="http://127.0.0.1/v2")).status_code == 201
    assert client.get("/models/iris").json["version"] == "1", "a new version is not the default unless it says so"
    assert client.post("/models", json=iris("3", default=True)).status_code == 201
    shown = client.get("/models/iris").json
    assert shown["version"] == "3" and shown["versions"] == ["1", "2", "3"]
    assert client.delete("/models/iris?version=3").status_code == 204
    assert client.get("/models/iris").json["version"] in ("1", "2")
    assert client.get("/models/iris").json["versions"] == ["1", "2"]


def test_a_request_may_pin_a_version_and_cache_keys_carry_it(api, client, fake_redis):
    ferry = api.extensions["ferry"]
    default = client.post("/models/echo/predictions", json={"input": {"x": 1}})
    pinned = client.post("/models/echo/predictions", json={"input": {"x": 1}, "version": "1"})
    assert default.json["version"] == "2" and pinned.json["version"] == "1"
    keys = {ferry.store.get(r.json["id"])["cache_key"] for r in (default, pinned)}
    assert keys == {ferry.cache.key("echo", "1", {"x": 1.0}), ferry.cache.key("echo", "2", {"x": 1.0})}
    ferry.cache.set(ferry.cache.key("echo", "1", {"x": 5.0}), '{"from":"v1"}', 60)
    hit = client.post("/models/echo/predictions", json={"input": {"x": 5}, "version": "1"})
    assert hit.status_code == 200 and hit.json["output"] == {"from": "v1"} and hit.json["version"] == "1"
    assert client.post("/models/echo/predictions", json={"input": {"x": 5}}).status_code == 202
    unknown = client.post("/models/echo/predictions", json={"input": {"x": 1}, "version": "9"})
    assert unknown.status_code == 404 and "serves 1, 2" in unknown.json["message"]


def test_removing_a_model_fails_its_queued_predictions_and_drops_its_cache(client, api, fake_redis):
    assert client.post("/models", json=iris()).status_code == 201
    queued = [client.post("/models/iris/predictions", json={"input": {"petal_length": n}}).json["id"]
              for n in (1, 2)]
    ferry = api.extensions["ferry"]
    cache_version = ferry.registry.get("iris").cache_version
    assert cache_version.startswith("1+"), "a runtime model's cache keys carry its revision"
    ferry.cache.set(ferry.cache.key("iris", cache_version, {"petal_length": 9.0}), '{"species":"old"}', 600)
    assert client.delete("/models/iris").status_code == 204
    for prediction_id in queued:
        shown = client.get(f"/predictions/{prediction_id}").json
        assert shown["status"] == "failed"
        assert shown["error"] == "Model 'iris' version '1' was removed before this prediction ran."
    assert not list(fake_redis.scan_iter("ferry:cache:iris:*"))
    assert client.get("/models/iris").status_code == 404
    assert client.post("/models/iris/predictions", json={"input": {"petal_length": 1}}).status_code == 404
    assert client.post("/models", json=iris(url="http://127.0.0.1/other")).status_code == 201
    assert client.post("/models/iris/predictions", json={"input": {"petal_length": 9}}).status_code == 202, \
        "the model registered again does not answer with the removed one's cached outputs"


def test_models_of_the_repository_file_cannot_be_removed_through_the_api(client):
    response = client.delete("/models/echo")
    assert response.status_code == 409 and "repository file" in response.json["message"]
    assert client.delete("/models/nope").status_code == 404


def test_a_worker_sees_a_registration_without_a_restart_and_fails_removed_ones_clearly(api, client, fake_redis,
                                                                                          repository):
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0", model_repository=str(repository), http_model_hosts=HOSTS), fake_redis,
                              sender=RecordingSender())
    assert client.post("/models", json=iris()).status_code == 201
    assert ctx.registry.get("iris").url == "http://models.internal:8100/v1/predict"
    prediction = client.post("/models/iris/predictions", json={"input": {"petal_length": 3}}).json
    api.extensions["ferry"].runtime.remove("iris")  # gone between the queueing and the run
    ctx.registry.sync(force=True)
    assert run_prediction(prediction["id"], ctx) == records.FAILED
    assert client.get(f"/predictions/{prediction['id']}").json["error"] == \
        "Model 'iris' version '1' is not served any more."


def test_a_batch_that_ends_after_its_model_was_removed_caches_nothing(api, client, fake_redis, repository,
                                                                      monkeypatch):
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0", model_repository=str(repository),
                                       http_model_hosts=HOSTS), fake_redis, sender=RecordingSender())
    assert client.post("/models", json=iris()).status_code == 201
    prediction = client.post("/models/iris/predictions", json={"input": {"petal_length": 3}}).json

    def removed_while_running(spec, inputs, **kwargs):
        api.extensions["ferry"].runtime.remove("iris")  # its cached outputs are dropped now
        ctx.registry.sync(force=True)
        return [('{"species":"setosa"}', None)] * len(inputs)

    monkeypatch.setattr(ctx.pool, "predict", removed_while_running)
    assert run_prediction(prediction["id"], ctx) == records.SUCCEEDED
    assert client.get(f"/predictions/{prediction['id']}").json["output"] == {"species": "setosa"}
    assert not list(fake_redis.scan_iter("ferry:cache:iris:*"))


def test_each_model_keeps_its_recent_requests_newest_first(api, client, fake_redis, repository):
    ferry = api.extensions["ferry"]
    ferry.cache.set(ferry.cache.key("echo", "2", {"x": 7.0}), '{"echo":7}', 60)
    assert client.post("/models/echo/predictions", json={"input": {"x": 7}},
                       headers={"X-Request-ID": "hit-1"}).status_code == 200
    ferry.request_log.flush()  # or its background thread does, within half a second
    queued = client.post("/models/echo/predictions", json={"input": {"x": 8}}).json["id"]
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0", model_repository=str(repository), http_model_hosts=HOSTS), fake_redis,
                              sender=RecordingSender())
    assert run_prediction(queued, ctx) == records.SUCCEEDED
    entries = client.get("/models/echo/logs").json
    assert [entry["cache_hit"] for entry in entries] == [False, True]
    ran, hit = entries
    assert hit["request_id"] == "hit-1" and hit["prediction_id"] is None and hit["status"] == "succeeded"
    assert ran["prediction_id"] == queued and ran["status"] == "succeeded" and ran["version"] == "2"
    assert ran["durations_ms"]["queue_ms"] >= 0 and ran["durations_ms"]["total_ms"] >= ran["durations_ms"]["run_ms"]
    assert client.get("/models/echo/logs?limit=1").json == [ran]
    assert keyed_client(api, scopes=[PREDICT], name="caller").get("/models/echo/logs").status_code == 403
    assert client.delete("/models/echo/logs").status_code == 204
    assert client.get("/models/echo/logs").json == []


def test_the_log_is_bounded(fake_redis, repository):
    bounded = make_app(fake_redis, repository, model_log_max=3)
    client = keyed_client(bounded)
    ferry = bounded.extensions["ferry"]
    ferry.cache.set(ferry.cache.key("echo", "2", {"x": 7.0}), '{"echo":7}', 60)
    for n in range(5):
        client.post("/models/echo/predictions", json={"input": {"x": 7}}, headers={"X-Request-ID": f"r{n}"})
    ferry.request_log.flush()
    assert [entry["request_id"] for entry in client.get("/models/echo/logs").json] == ["r4", "r3", "r2"]


def test_a_prediction_never_runs_on_a_later_registration_under_the_same_name_and_version(api, client, fake_redis,
                                                                                          repository):
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0", model_repository=str(repository), http_model_hosts=HOSTS), fake_redis,
                              sender=RecordingSender())
    assert client.post("/models", json=iris()).status_code == 201
    ctx.registry.get("iris")  # the worker knows the first registration
    prediction = client.post("/models/iris/predictions", json={"input": {"petal_length": 3}}).json
    runtime = api.extensions["ferry"].runtime
    runtime.remove("iris")
    runtime.register(iris(url="http://127.0.0.1/replacement"), reserved=set())
    assert run_prediction(prediction["id"], ctx) == records.FAILED
    assert client.get(f"/predictions/{prediction['id']}").json["error"] == \
        "Model 'iris' version '1' is not served any more."


def test_registrations_are_bounded_per_version(fake_redis, repository):
    client = keyed_client(make_app(fake_redis, repository, runtime_models_max=2))
    assert client.post("/models", json=iris("1")).status_code == 201
    assert client.post("/models", json=iris("2")).status_code == 201
    refused = client.post("/models", json=iris("3"))
    assert refused.status_code == 409 and "FERRY_RUNTIME_MODELS_MAX" in refused.json["message"]


def test_removing_the_default_makes_the_latest_registration_the_default(client):
    for version in ("10", "9", "2"):
        assert client.post("/models", json=iris(version)).status_code == 201
    assert client.get("/models/iris").json["version"] == "10"
    assert client.delete("/models/iris?version=10").status_code == 204
    assert client.get("/models/iris").json["version"] == "2"


def test_a_host_no_longer_allowed_stops_serving_and_a_shadowed_name_yields_to_the_file(fake_redis, repository):
    client = keyed_client(make_app(fake_redis, repository))
    assert client.post("/models", json=iris()).status_code == 201
    narrower = keyed_client(make_app(fake_redis, repository, http_model_hosts="127.0.0.1"))
    assert narrower.get("/models/iris").status_code == 404
    runtime = client.application.extensions["ferry"].runtime
    runtime.register({**iris(), "name": "echo", "version": "7"}, reserved=set())  # as if the file gained it later
    shown = client.get("/models/echo").json
    assert shown["kind"] == "torch" and shown["versions"] == ["1", "2"]


@pytest.mark.parametrize("setting, url, allowed", [
    ("[::1]:8100", "http://[::1]:8100/v1", True),
    ("[::1]:8100", "http://[::1]:8101/v1", False),
    ("[::1]", "http://[::1]:9000/v1", True),
    ("::1", "http://[::1]:9000/v1", True),
    ("[fd00::5]:8100", "http://[::1]:8100/v1", False),
    ("models.internal:8100", "http://models.internal:81/v1", False),
    ("models.internal", "https://MODELS.internal/v1", True),
])
def test_allowed_hosts_match_exactly_ipv6_included(setting, url, allowed):
    from models.runtime import RegistrationError, allowed_hosts, check_url

    if allowed:
        check_url(url, allowed_hosts(setting))
    else:
        with pytest.raises(RegistrationError) as refused:
            check_url(url, allowed_hosts(setting))
        assert refused.value.status == 403


def test_an_idempotency_key_reused_for_another_version_is_422(client):
    def submit(version):
        return client.post("/models/echo/predictions", json={"input": {"x": 1}, **version},
                           headers={"Idempotency-Key": "k-3"})

    first = submit({"version": "1"})
    assert first.status_code == 202 and first.json["version"] == "1"
    other = submit({"version": "2"})
    assert other.status_code == 422 and "k-3" in other.json["message"]
    assert submit({}).status_code == 422  # the default, 2, is another version too
    assert submit({"version": "1"}).json["id"] == first.json["id"]


def test_a_redis_that_does_not_answer_costs_a_request_one_registry_timeout():
    import time

    import redis

    from models.declaration import parse_repository
    from models.registry import Registry

    class Unanswering:
        calls = 0

        def generation(self):
            self.calls += 1
            time.sleep(1.2)  # the client's socket timeout
            raise redis.TimeoutError("Timeout reading from socket")

    runtime = Unanswering()
    registry = Registry(parse_repository({"models": [declaration("echo", "Echo")]}), runtime=runtime, refresh_s=1.0)
    for _ in range(4):  # the lookups of one submit: the model, its schema...
        assert registry.get("echo").name == "echo" and registry.input_schema("echo") is not None
    assert runtime.calls == 1


def test_a_runtime_model_may_use_a_device_queue_or_one_a_running_worker_consumes(client, fake_redis):
    import json
    import time

    assert client.post("/models", json=iris(queue="realtime-cuda-1")).status_code == 201
    assert client.post("/models", json=iris(version="2", queue="pinned")).status_code == 422
    fake_redis.hset("ferry:workers", "w@host", json.dumps({"queues": ["pinned", "batch"], "last_seen": time.time()}))
    assert client.post("/models", json=iris(version="2", queue="pinned")).status_code == 201
