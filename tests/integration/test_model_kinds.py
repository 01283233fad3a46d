"""One server for many models, on a real Redis with real workers: a subprocess model that
dies and comes back, an http model server registered at run time (two versions), removal
failing queued predictions, and the model pool's routing, eviction and report."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from tests.auth import authorize
from tests.fake_models import declaration
from tests.integration.conftest import build_live_app, run_worker
from tests.processes import free_port, start_iris_server, stop_group, wait_for

pytestmark = pytest.mark.integration
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}


def iris_declaration(version: str, url: str, **extra) -> dict:
    return {"name": "iris", "kind": "http", "version": version, "url": url, "timeout_s": 10,
            "batching": {"max_batch_size": 8, "max_wait_ms": 5},
            "inputs": {name: {"type": "number", "required": True, "min": 0, "max": 20} for name in SETOSA}, **extra}


def wait_result(client, response, timeout_s: float = 60) -> dict:
    assert response.status_code in (200, 202), response.json
    body = response.json
    deadline = time.monotonic() + timeout_s
    while body["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        body = client.get(f"/predictions/{body['id']}").json
    return body


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no process {pid}")


def test_the_shipped_subprocess_model_counts_words(live_client):
    response = live_client.post("/models/textstats/predictions", json={"input": {"text": "One ferry. Two ferries!"}},
                                headers={"Prefer": "wait=60"})
    body = wait_result(live_client, response)
    assert body["status"] == "succeeded", body
    assert body["output"] == {"characters": 23, "words": 4, "sentences": 2, "top_words": ["one", "ferry", "two"]}


def test_a_subprocess_model_that_dies_fails_that_request_clearly_and_is_restarted(live_client):
    first = wait_result(live_client, live_client.post("/models/mortal/predictions", json={"input": {"x": 1}}))
    assert first["status"] == "succeeded", first
    died = wait_result(live_client, live_client.post("/models/mortal/predictions", json={"input": {"x": -1}}))
    assert died["status"] == "failed"
    assert died["error"] == ("RuntimeError: The model's process exited (code 3) while running this input; "
                             "a new one is started for the next. Its last words on stderr: asked to die")
    again = wait_result(live_client, live_client.post("/models/mortal/predictions", json={"input": {"x": 4}}))
    assert again["status"] == "succeeded" and again["output"]["double"] == 8
    assert again["output"]["pid"] != first["output"]["pid"]


@pytest.fixture(scope="module")
def iris_server():
    port = free_port()
    proc = start_iris_server(port)
    base = f"http://127.0.0.1:{port}"
    yield base, port
    stop_group(proc)


@pytest.fixture
def admin_client(redis_url, worker, repository_file, data_dir, iris_server, api_key):
    app = build_live_app(redis_url, repository_file, data_dir, http_model_hosts=f"127.0.0.1:{iris_server[1]}")
    yield authorize(app.test_client(), api_key)
    authorize(app.test_client(), api_key).delete("/models/iris")


def test_an_http_model_registered_at_run_time_serves_at_once_in_two_versions(admin_client, iris_server, worker):
    base, _ = iris_server
    created = admin_client.post("/models", json=iris_declaration("1", f"{base}/v1/predict"))
    assert created.status_code == 201, created.json
    v1 = wait_result(admin_client, admin_client.post("/models/iris/predictions", json={"input": SETOSA}))
    assert v1["status"] == "succeeded", v1
    assert v1["version"] == "1" and v1["output"]["species"] == "setosa"
    assert admin_client.post("/models", json=iris_declaration("2", f"{base}/v2/predict", default=True)).status_code == 201
    v2 = wait_result(admin_client, admin_client.post("/models/iris/predictions", json={"input": VIRGINICA}))
    assert v2["version"] == "2" and v2["output"]["species"] == "virginica"
    pinned = wait_result(admin_client, admin_client.post("/models/iris/predictions",
                                                         json={"input": VIRGINICA, "version": "1"}))
    assert pinned["version"] == "1" and pinned["status"] == "succeeded"
    loaded = admin_client.get("/models/iris").json["loaded"]
    assert {entry["version"] for entry in loaded} == {"1", "2"}
    assert all(entry["worker"].endswith(f":{entry['pid']}") and parent_of(entry["pid"]) == worker.pid
               for entry in loaded)
    logs = admin_client.get("/models/iris/logs").json
    assert [entry["prediction_id"] for entry in logs[:3]] == [pinned["id"], v2["id"], v1["id"]]


def test_an_unreachable_http_model_is_retried_then_fails_clearly(admin_client, iris_server):
    declaration = iris_declaration("1", f"http://127.0.0.1:{iris_server[1]}/nowhere/predict",
                                   retries={"max": 1, "backoff_s": 0.1})
    assert admin_client.post("/models", json=declaration).status_code == 201
    body = wait_result(admin_client, admin_client.post("/models/iris/predictions", json={"input": SETOSA}))
    assert body["status"] == "failed"
    assert "answered 404" in body["error"], body


def test_removing_a_model_fails_the_predictions_still_queued_for_it(admin_client, iris_server):
    # Routed to a GPU this machine lacks, so no worker consumes it: they stay queued until the model goes.
    declaration = iris_declaration("1", f"{iris_server[0]}/v1/predict", queue="realtime-cuda-7")
    assert admin_client.post("/models", json=declaration).status_code == 201
    queued = [admin_client.post("/models/iris/predictions", json={"input": {**SETOSA, "petal_width": w}}).json
              for w in (0.1, 0.2, 0.3)]
    assert {body["status"] for body in queued} == {"queued"}
    assert admin_client.delete("/models/iris").status_code == 204
    for body in queued:
        shown = admin_client.get(f"/predictions/{body['id']}").json
        assert shown["status"] == "failed"
        assert shown["error"] == "Model 'iris' version '1' was removed before this prediction ran."


@pytest.fixture(scope="module")
def pool_repository(tmp_path_factory):
    """Two models routed to their own queue, which only the pool test's worker consumes."""
    path = tmp_path_factory.mktemp("pool") / "repository.yaml"
    path.write_text(yaml.safe_dump({"models": [declaration("weighty-a", "Weighty", queue="pool-test"),
                                               declaration("weighty-b", "Weighty", queue="pool-test")]}))
    return path


@pytest.fixture(scope="module")
def pool_worker(redis_url, real_redis, tmp_path_factory, pool_repository, data_dir):
    """The only worker on the `pool-test` queue: it keeps one model loaded, lets it go after
    6 idle seconds, and reports every second."""
    proc = run_worker(redis_url, real_redis, tmp_path_factory.mktemp("pool-worker"), "pool-test",
                      model_repository=pool_repository, data_dir=data_dir, pool_max_models=1, pool_idle_s=6,
                      heartbeat_s=1)
    yield proc
    stop_group(proc)


@pytest.fixture
def pool_client(redis_url, pool_repository, data_dir, api_key):
    return authorize(build_live_app(redis_url, pool_repository, data_dir).test_client(), api_key)


def test_models_route_to_their_queue_and_the_pool_evicts_by_count_and_idle_time(pool_client, pool_worker, worker):
    a = wait_result(pool_client, pool_client.post("/models/weighty-a/predictions", json={"input": {"x": 1}}))
    assert a["status"] == "succeeded", a
    assert parent_of(a["output"]["pid"]) == pool_worker.pid, "pool-test models run only on the pool-test worker"
    (loaded,) = pool_client.get("/models/weighty-a").json["loaded"]
    assert loaded["pid"] == a["output"]["pid"] and loaded["device"] == "cpu" and loaded["memory_mb"] == 100.0
    assert pool_client.get("/models/weighty-b").json["loaded"] == []
    b = wait_result(pool_client, pool_client.post("/models/weighty-b/predictions", json={"input": {"x": 2}}))
    assert b["status"] == "succeeded"
    assert pool_client.get("/models/weighty-a").json["loaded"] == [], "past one model, the least recent one goes"
    assert [entry["pid"] for entry in pool_client.get("/models/weighty-b").json["loaded"]] == [b["output"]["pid"]]
    wait_for(lambda: pool_client.get("/models/weighty-b").json["loaded"] == [], 20, "idle model unloaded")
    assert "unloaded model weighty-b:1 (idle for 6 s)" in pool_worker.log_path.read_text()

