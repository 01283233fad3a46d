"""End to end over HTTP, against the processes that `make dev` (`ferry dev`) starts:
embedded redis-server, gunicorn API, Celery worker, beat and Flower under honcho."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.e2e.conftest import API_KEY
from tests.processes import BIN, ROOT, ferry_env, start_iris_server, stop_group, wait_for
from tests.support import digit_png_base64

pytestmark = pytest.mark.e2e

def poll(http: requests.Session, url: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = http.get(url, timeout=5)
        assert response.status_code == 200
        if response.json()["status"] in ("succeeded", "failed", "canceled"):
            return response.json()
        time.sleep(0.1)
    raise TimeoutError(url)


def test_the_banner_prints_the_urls(stack):
    banner = stack["log"].read_text(errors="replace")
    assert stack["api"] in banner and stack["flower"] in banner and "redis://127.0.0.1:" in banner
    assert f"Authorization: Bearer {API_KEY}" in banner
    assert f"Try it   {stack['api']}/" in banner
    # The README's first batch step writes into this folder at once.
    assert f"Batch    input files in {stack['data'] / 'batch-inputs'}" in banner
    assert (stack["data"] / "batch-inputs").is_dir()


def test_digit_image_202_then_poll_then_cache_hit(stack):
    image, label = digit_png_base64(5, size=(128, 128))
    url = f"{stack['api']}/models/digits/predictions"
    submitted = stack["http"].post(url, json={"input": {"image": image}}, timeout=10)
    assert submitted.status_code == 202
    location = submitted.headers["Location"]
    assert location.startswith("/predictions/")
    done = poll(stack["http"], stack["api"] + location)
    assert done["status"] == "succeeded", done
    assert done["output"]["label"] == label
    again = stack["http"].post(url, json={"input": {"image": image}}, timeout=10)
    assert again.status_code == 200 and again.json()["cached"] is True
    assert again.json()["output"] == done["output"]


def test_repeated_cache_hits_answer_alike_through_gunicorn(stack):
    """A body that was a hit is answered beneath Flask from then on (app/fast_path.py): through
    gunicorn each answer is the one Flask gave first, and a body Flask must see still reaches it."""
    url = f"{stack['api']}/models/digits/predictions"
    body = json.dumps({"input": {"pixels": [float(v % 13) for v in range(64)]}})
    headers = {"Content-Type": "application/json"}
    submitted = stack["http"].post(url, data=body, headers=headers, timeout=10)
    assert submitted.status_code == 202, submitted.text
    assert poll(stack["http"], stack["api"] + submitted.headers["Location"])["status"] == "succeeded"
    answers = [stack["http"].post(url, data=body, headers={**headers, "X-Request-ID": f"hit-{n}"}, timeout=10)
               for n in range(8)]  # each API process answers its first through Flask, then beneath it
    for n, answer in enumerate(answers):
        assert answer.status_code == 200 and answer.content == answers[0].content
        assert sorted(answer.headers) == sorted(answers[0].headers)
        assert answer.headers["X-Request-ID"] == f"hit-{n}" and answer.headers["Content-Type"] == "application/json"
    replayed = stack["http"].post(url, data=body, headers={**headers, "Idempotency-Key": "fast-hits-e2e"}, timeout=10)
    assert replayed.status_code == 200 and replayed.content == answers[0].content


def test_sentences_embed_and_rank(stack):
    def embed(text):
        submitted = stack["http"].post(f"{stack['api']}/models/minilm/predictions", json={"input": {"text": text}},
                                       timeout=10)
        assert submitted.status_code in (200, 202)
        body = (submitted.json() if submitted.status_code == 200
                else poll(stack["http"], stack["api"] + submitted.headers["Location"]))
        assert body["status"] == "succeeded", body
        return np.array(body["output"]["embedding"])

    query = embed("How do I reset my password?")
    paraphrase = embed("What are the steps to change my password?")
    unrelated = embed("Penguins live in the southern hemisphere.")
    assert query.shape == (384,)
    assert query @ paraphrase > query @ unrelated


def test_bad_requests_get_readable_errors(stack):
    http, url = stack["http"], f"{stack['api']}/models/digits/predictions"
    bad = http.post(url, json={"input": {"pixels": [0] * 10}}, timeout=10)
    assert bad.status_code == 422 and "pixels" in bad.json()["errors"]["json"]["input"]
    assert http.post(url, data="{", headers={"Content-Type": "application/json"}, timeout=10).status_code == 400
    assert http.post(f"{stack['api']}/models/nope/predictions", json={"input": {}}, timeout=10).status_code == 404
    assert http.get(f"{stack['api']}/predictions/{'0' * 32}", timeout=10).status_code == 404
    # Each on a new connection: the server may close one whose body it refused unread.
    headers = {**http.headers, "Content-Type": "application/json"}
    huge = requests.post(url, data=b"x" * (3 * 1024 * 1024), headers=headers, timeout=10)
    assert huge.status_code == 413
    chunked = requests.post(url, data=(b"x" * 65536 for _ in range(48)), headers=headers, timeout=10)
    assert chunked.status_code == 413 and chunked.json()["code"] == 413
    # gunicorn refuses these before Flask sees them, in the same error body.
    for response, status in ((requests.get(f"{stack['api']}/models/{'a' * 5000}", timeout=10), 414),
                             (requests.get(f"{stack['api']}/models", headers={"X-Big": "a" * 9000}, timeout=10), 431)):
        assert response.status_code == status and response.headers["Content-Type"] == "application/json"
        assert set(response.json()) == {"code", "status", "message", "errors"}


def test_docs_open_and_flower_behind_auth(stack):
    assert requests.get(f"{stack['api']}/docs", timeout=10).status_code == 200
    assert requests.get(f"{stack['api']}/openapi.json", timeout=10).json()["info"]["title"] == "Ferry"
    wait_for(lambda: requests.get(stack["flower"], timeout=2).status_code == 401, 60, "flower")
    assert requests.get(stack["flower"], auth=("ferry", "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{stack['flower']}/api/workers", timeout=10).status_code == 401
    assert requests.get(stack["flower"], auth=("ferry", "e2e-secret"), timeout=10).status_code == 200
    # Any local user reads command lines (`ps`): the password is in none of them.
    shown = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            shown.append(cmdline.read_bytes())
        except OSError:  # a process that ended meanwhile
            pass
    assert shown and not any(b"e2e-secret" in line for line in shown)


def test_keys_made_with_the_cli(stack):
    def create(name, *scopes):
        result = subprocess.run(
            [str(BIN / "ferry"), "keys", "create", "--name", name, *(arg for s in scopes for arg in ("--scope", s))],
            cwd=ROOT, env=ferry_env(redis_url=stack["redis"]), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return {"Authorization": f"Bearer {result.stdout.splitlines()[-1]}"}

    alice, bob = create("alice", "predict"), create("bob", "predict")
    url = f"{stack['api']}/models/minilm/predictions"
    assert requests.post(url, json={"input": {"text": "whose?"}}, timeout=10).status_code == 401
    submitted = requests.post(url, json={"input": {"text": "whose?"}}, headers=alice, timeout=10)
    assert submitted.status_code == 202
    location = stack["api"] + submitted.headers["Location"]
    assert requests.get(location, headers=alice, timeout=10).status_code == 200
    assert requests.get(location, headers=bob, timeout=10).status_code == 404
    assert requests.get(f"{stack['api']}/batch-jobs", headers=alice, timeout=10).status_code == 403


def test_batch_job_over_http_then_cache_hits(stack):
    http = stack["http"]
    texts = [f"nightly sentence {i}" for i in range(30)]
    inputs = stack["data"] / "batch-inputs"
    (inputs / "nightly.jsonl").write_text("".join(f'{{"text": "{text}"}}\n' for text in texts) + "oops\n")
    assert requests.post(f"{stack['api']}/batch-jobs", json={}, timeout=10).status_code == 401
    created = http.post(f"{stack['api']}/batch-jobs", timeout=10,
                        json={"model": "minilm", "source": {"type": "jsonl", "path": "nightly.jsonl"}})
    assert created.status_code == 202, created.text
    url = stack["api"] + created.headers["Location"]
    job = wait_for(lambda: (lambda body: body if body["status"] == "succeeded" else None)(
        http.get(url, timeout=5).json()), 120, "batch job")
    assert (job["progress"]["done"], job["progress"]["invalid"]) == (30, 1)
    assert job["errors"][0]["line"] == 31
    hit = http.post(f"{stack['api']}/models/minilm/predictions", json={"input": {"text": texts[3]}}, timeout=10)
    assert hit.status_code == 200 and hit.json()["cached"] is True
    results = [json.loads(line) for line in http.get(url + "/results", timeout=10).text.splitlines()]
    assert [row["input"] for row in results] == [{"text": text} for text in texts] + ["oops"]
    assert all("output" in row for row in results[:30]) and results[30]["error"] == job["errors"][0]["error"]


def test_metrics_add_up_across_api_processes_and_workers(stack):
    from prometheus_client.parser import text_string_to_metric_families

    pixels = [min(float(v), 16.0) for v in range(64)]
    submitted = stack["http"].post(f"{stack['api']}/models/digits/predictions", json={"input": {"pixels": pixels}},
                                   timeout=10)
    assert submitted.status_code == 202, submitted.text
    assert poll(stack["http"], stack["api"] + submitted.headers["Location"])["status"] == "succeeded"
    response = requests.get(f"{stack['api']}/metrics", timeout=10)
    assert response.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    submits = {"method": "POST", "route": "/models/<name>/predictions", "status": "202"}
    assert samples[("ferry_http_requests_total", tuple(sorted(submits.items())))] >= 1
    assert samples[("ferry_predictions_completed_total", (("model", "digits"),))] >= 1
    assert samples[("ferry_worker_predict_duration_seconds_count", (("model", "digits"),))] >= 1
    assert ("ferry_queue_depth", (("queue", "realtime-cpu"),)) in samples


def test_events_stream_through_gunicorn_as_they_happen(stack):
    http = stack["http"]
    submitted = http.post(f"{stack['api']}/models/pi/predictions", timeout=10,
                          json={"input": {"rounds": 4, "points_per_round": 10000, "pause_s": 0.3}})
    assert submitted.status_code == 202, submitted.text
    kinds, last = [], None
    with http.get(stack["api"] + submitted.headers["Location"] + "/events", stream=True, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                kinds.append(line[len("event: "):])
            elif line.startswith("data: "):
                last = json.loads(line[len("data: "):])
    assert kinds[0] == "status" and "progress" in kinds
    assert last["status"] == "succeeded" and last["output"]["points"] == 40000


def test_request_and_prediction_ids_reach_the_worker_logs(stack):
    pixels = [min(float(v % 17), 16.0) for v in range(64, 128)]
    submitted = stack["http"].post(f"{stack['api']}/models/digits/predictions", json={"input": {"pixels": pixels}},
                                   headers={"X-Request-ID": "e2e-trace-7"}, timeout=10)
    assert submitted.status_code == 202 and submitted.headers["X-Request-ID"] == "e2e-trace-7"
    prediction_id = submitted.json()["id"]
    assert poll(stack["http"], stack["api"] + submitted.headers["Location"])["status"] == "succeeded"

    def traced_lines():
        found = {}
        for line in stack["log"].read_text(errors="replace").splitlines():
            name, _, rest = line.partition(" | ")  # honcho: "HH:MM:SS api.1 | {...}"
            if rest.startswith("{"):
                entry = json.loads(rest)
                if entry.get("request_id") == "e2e-trace-7" and entry.get("prediction_id") == prediction_id:
                    found.setdefault(name.split()[-1].split(".")[0], []).append(entry["message"])
        return found if {"api", "worker"} <= set(found) else None

    found = wait_for(traced_lines, 30, "log lines of the traced prediction")
    assert any("succeeded" in message for message in found["worker"]), found


def test_flower_shows_predictions_by_model_and_id(stack):
    submitted = stack["http"].post(f"{stack['api']}/models/pi/predictions", timeout=10,
                                   json={"input": {"rounds": 1, "pause_s": 0, "seed": 11}})
    assert submitted.status_code == 202
    prediction_id = submitted.json()["id"]
    auth = ("ferry", "e2e-secret")

    def shown():
        tasks = requests.get(f"{stack['flower']}/api/tasks", auth=auth, timeout=5).json()
        return [task for task in tasks.values() if prediction_id in (task.get("args") or "")]

    task = wait_for(shown, 60, "the task in Flower")[0]
    assert task["name"] == "ferry.predict"
    assert task["args"] == f"(pi 1.0.0, prediction {prediction_id})"
    assert requests.get(f"{stack['flower']}/api/tasks", timeout=5).status_code == 401


def test_the_readmes_http_model_registers_serves_and_goes(stack):
    """`Adding a model`: the example iris server, registered over HTTP while Ferry runs."""
    http, api, port = stack["http"], stack["api"], stack["model_port"]
    server = start_iris_server(port)
    try:
        fields = {name: {"type": "number", "required": True, "min": 0, "max": 20}
                  for name in ("sepal_length", "sepal_width", "petal_length", "petal_width")}
        created = http.post(f"{api}/models", json={"name": "iris", "kind": "http", "version": "1",
                                                   "url": f"http://127.0.0.1:{port}/v1/predict", "inputs": fields},
                            timeout=10)
        assert created.status_code == 201, created.text
        assert created.headers["Location"].endswith("/models/iris")
        flower = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
        answer = http.post(f"{api}/models/iris/predictions", json={"input": flower},
                           headers={"Prefer": "wait=60"}, timeout=70).json()
        answer = poll(http, f"{api}/predictions/{answer['id']}") if answer["status"] != "succeeded" else answer
        assert answer["output"]["species"] == "virginica", answer
        assert http.post(f"{api}/models/iris/predictions", json={"input": flower}, timeout=10).json()["cached"]
        logs = http.get(f"{api}/models/iris/logs", timeout=10).json()
        assert logs[-1]["prediction_id"] == answer["id"] and logs[-1]["status"] == "succeeded"
        loaded = http.get(f"{api}/models/iris", timeout=10).json()["loaded"]
        assert [entry["version"] for entry in loaded] == ["1"]
        assert http.delete(f"{api}/models/iris", timeout=10).status_code == 204
        assert http.get(f"{api}/models/iris", timeout=10).status_code == 404
    finally:
        stop_group(server)

