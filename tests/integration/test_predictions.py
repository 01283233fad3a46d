"""The whole path with a real Redis and a real worker running both real models."""
from __future__ import annotations

import time

import numpy as np
import pytest

from tests.support import digit_png_base64

pytestmark = pytest.mark.integration


def poll(client, location: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(location).json
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        time.sleep(0.05)
    raise TimeoutError(f"{location} still {body['status']}")


def test_digit_image_goes_through_the_worker_and_back(live_client):
    image, label = digit_png_base64(3, size=(96, 96))
    submitted = live_client.post("/models/digits/predictions", json={"input": {"image": image}})
    assert submitted.status_code == 202
    done = poll(live_client, submitted.headers["Location"])
    assert done["status"] == "succeeded", done
    assert done["output"]["label"] == label
    assert len(done["output"]["probabilities"]) == 10
    timings = done["timings"]
    assert timings["queue_ms"] >= 0 and timings["run_ms"] > 0 and timings["finished_at"]

    again = live_client.post("/models/digits/predictions", json={"input": {"image": image}})
    assert again.status_code == 200
    assert again.json["cached"] is True and again.json["output"] == done["output"]


def test_prefer_wait_returns_the_output_in_one_call(live_client):
    pixels, label = digit_pixels(11)
    response = live_client.post("/models/digits/predictions", json={"input": {"pixels": pixels}},
                                headers={"Prefer": "wait=30"})
    assert response.status_code == 200, response.json
    assert response.json["status"] == "succeeded" and response.json["output"]["label"] == label


def digit_pixels(index: int) -> tuple[list[float], int]:
    from tests.support import test_split

    x_test, y_test = test_split()
    return [float(v) for v in x_test[index]], int(y_test[index])


def embed(client, text: str) -> np.ndarray:
    response = client.post("/models/minilm/predictions", json={"input": {"text": text}}, headers={"Prefer": "wait=60"})
    assert response.status_code == 200, response.json
    return np.array(response.json["output"]["embedding"])


def test_minilm_embeddings_rank_a_paraphrase_above_an_unrelated_sentence(live_client):
    query = embed(live_client, "A man is playing a guitar on stage.")
    paraphrase = embed(live_client, "Someone performs music with a guitar in front of an audience.")
    unrelated = embed(live_client, "The quarterly tax report is due on Friday.")
    assert query.shape == (384,)
    assert abs(np.linalg.norm(query) - 1) < 1e-3
    assert query @ paraphrase > query @ unrelated + 0.2


def test_unnormalized_embeddings_are_a_different_cache_entry(live_client):
    plain = live_client.post("/models/minilm/predictions", json={"input": {"text": "unit length?", "normalize": False}},
                             headers={"Prefer": "wait=60"}).json
    assert plain["cached"] is False
    assert abs(np.linalg.norm(plain["output"]["embedding"]) - 1) > 1e-3


def test_readiness_sees_the_worker(live_client):
    ready = live_client.get("/health/ready")
    assert ready.status_code == 200, ready.json
    assert ready.json["checks"]["queues"] == {"realtime-cpu": "ok"}
    assert ready.json["checks"]["redis"] == "ok"


def test_records_expire(live_client, real_redis):
    response = live_client.post("/models/minilm/predictions", json={"input": {"text": "ttl check"}})
    ttl = real_redis.ttl(f"ferry:prediction:{response.json['id']}")
    assert 0 < ttl <= 24 * 3600


def test_concurrent_predictions_share_forward_passes(live_client):
    submitted = [live_client.post("/models/slow/predictions", json={"input": {"x": 5000.0 + i}}) for i in range(12)]
    assert all(response.status_code == 202 for response in submitted)
    done = [poll(live_client, response.headers["Location"]) for response in submitted]
    assert all(body["status"] == "succeeded" for body in done), done
    assert [body["output"]["double"] for body in done] == [2 * (5000.0 + i) for i in range(12)]
    sizes = [body["batch_size"] for body in done]
    assert max(sizes) > 1 and max(sizes) <= 5, sizes  # slow declares max_batch_size 5


def test_soft_time_limit_fails_the_prediction_clearly(live_client):
    response = live_client.post("/models/sleepy/predictions", json={"input": {"x": 5.0}})
    done = poll(live_client, response.headers["Location"])
    assert done["status"] == "failed" and done["error"] == "Timed out after 1 s.", done


def test_a_setup_slower_than_the_time_limit_fails_the_first_predictions_then_serves(live_client):
    first = poll(live_client, live_client.post("/models/slow-setup/predictions", json={"input": {"x": 1.0}})
                 .headers["Location"])
    assert first["status"] == "failed" and "while the model was loading (Model.setup)" in first["error"], first
    # The setup went on after that task's limit: a later prediction finds the model loaded.
    later = {}
    for attempt in range(10):
        time.sleep(1)
        later = poll(live_client, live_client.post("/models/slow-setup/predictions",
                                                   json={"input": {"x": 2.0 + attempt}}).headers["Location"])
        if later["status"] == "succeeded":
            break
    assert later["status"] == "succeeded", later


def test_hard_time_limit_stops_a_model_that_ignores_the_soft_one(live_client):
    response = live_client.post("/models/stubborn/predictions", json={"input": {"x": 30.0}})
    done = poll(live_client, response.headers["Location"])
    assert done["status"] == "failed" and done["error"] == "Timed out: stopped after 2 s.", done


def test_transient_errors_are_retried_with_backoff(live_client):
    response = live_client.post("/models/flaky/predictions", json={"input": {"x": 2.0}})
    done = poll(live_client, response.headers["Location"])
    assert done["status"] == "succeeded" and done["output"] == {"tries": 3.0}, done
    assert done["error"] is None


def wait_running(client, location: str) -> None:
    from tests.processes import wait_for

    wait_for(lambda: client.get(location).json["status"] == "running", 60, f"{location} running")


def test_a_running_prediction_is_canceled_where_its_model_allows_it(live_client):
    stoppable = live_client.post("/models/patient/predictions", json={"input": {"x": 60.0}})
    wait_running(live_client, stoppable.headers["Location"])
    asked = live_client.delete(stoppable.headers["Location"])
    assert asked.status_code == 202 and asked.json["status"] == "running"
    assert poll(live_client, stoppable.headers["Location"], timeout_s=30)["status"] == "canceled"

    # Long enough to be seen running and asked to stop on a busy machine.
    unstoppable = live_client.post("/models/busy/predictions", json={"input": {"x": 3.0}})
    wait_running(live_client, unstoppable.headers["Location"])
    refused = live_client.delete(unstoppable.headers["Location"])
    assert refused.status_code == 409 and "cannot stop mid-run" in refused.json["message"]
    assert poll(live_client, unstoppable.headers["Location"])["status"] == "succeeded"
