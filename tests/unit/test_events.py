"""GET /predictions/{id}/events on fakeredis: the stream follows what the worker writes.

Pub/sub messages wait in the stream's connection until it reads them, so each test makes
a change and then reads the next event, with no threads and no timing."""
from __future__ import annotations

import json

import pytest

from app import create_app
from tasks import records
from tests.auth import keyed_client

PIXELS = [0.0] * 64


def events(response):
    """(kind, data) for each event, and ("comment", text) for each comment line."""
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            if block.startswith(":"):
                yield "comment", block[1:].strip()
                continue
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            yield fields["event"], json.loads(fields["data"])


def next_event(stream):
    for kind, data in stream:
        if kind != "comment":
            return kind, data
    raise AssertionError("the stream ended")


def submit(client) -> str:
    # A new input each time: an identical one would share the prediction already queued.
    submit.count = getattr(submit, "count", 0) + 1
    pixels = [float(submit.count % 17), float(submit.count // 17 % 17)] + PIXELS[2:]
    response = client.post("/models/digits/predictions", json={"input": {"pixels": pixels}})
    assert response.status_code == 202
    return response.json["id"]


def take(store, prediction_id: str) -> None:
    """A worker takes a queued prediction into a batch (and announces it)."""
    assert store.take("w:1", 15, "digits", "1.0.0", 0, started_at="1.0", own_id=prediction_id).outcome == "taken"


@pytest.fixture
def store(app):
    return app.extensions["ferry"].store


def test_stream_follows_queue_position_progress_and_result(client, store):
    first, second = submit(client), submit(client)
    response = client.get(f"/predictions/{second}/events", buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    stream = events(response)
    try:
        kind, data = next_event(stream)
        assert (kind, data["status"], data["queue_position"]) == ("status", "queued", 2)

        take(store, first)
        kind, data = next_event(stream)
        assert (kind, data["status"], data["queue_position"]) == ("progress", "queued", 1)

        take(store, second)
        kind, data = next_event(stream)
        assert (kind, data["status"], data["queue_position"]) == ("status", "running", None)

        store.report_progress(second, 0.25, json.dumps({"estimate": 3.2}))
        kind, data = next_event(stream)
        assert (kind, data["progress"], data["partial_output"]) == ("progress", 0.25, {"estimate": 3.2})

        store.update(second, records.SUCCEEDED, output=json.dumps({"label": 0}), finished_at="2.0")
        kind, data = next_event(stream)
        assert (kind, data["status"], data["output"], data["progress"]) == ("status", "succeeded", {"label": 0}, 1.0)
        assert data["partial_output"] is None
        assert list(stream) == []  # the stream ends after a terminal status
    finally:
        response.close()


def test_a_finished_prediction_streams_once_and_ends(client, store):
    prediction_id = submit(client)
    store.update(prediction_id, records.FAILED, error="boom", finished_at="2.0")
    response = client.get(f"/predictions/{prediction_id}/events", buffered=False)
    assert [(kind, data["status"], data["error"]) for kind, data in events(response)] == [
        ("status", "failed", "boom")]
    response.close()


def test_get_shows_queue_position_and_progress(client, store):
    first, second = submit(client), submit(client)
    assert client.get(f"/predictions/{second}").json["queue_position"] == 2
    take(store, first)
    store.report_progress(first, 0.5, json.dumps({"so_far": 1}))
    running = client.get(f"/predictions/{first}").json
    assert (running["queue_position"], running["progress"], running["partial_output"]) == (None, 0.5, {"so_far": 1})
    assert client.get(f"/predictions/{second}").json["queue_position"] == 1


def test_unknown_and_foreign_predictions_are_404(app, client):
    assert client.get(f"/predictions/{'0' * 32}/events").status_code == 404
    assert client.get("/predictions/not-an-id/events").status_code == 404
    prediction_id = submit(client)
    stranger = keyed_client(app, name="someone else")
    assert stranger.get(f"/predictions/{prediction_id}/events").status_code == 404
    assert app.test_client().get(f"/predictions/{prediction_id}/events").status_code == 401


def test_streams_past_the_bound_are_503_until_one_closes(fake_redis, sender):
    app = create_app({"TESTING": True, "redis_url": "redis://unused:1/0", "max_event_streams": 1},
                     redis_client=fake_redis, sender=sender)
    client = keyed_client(app)
    prediction_id = submit(client)
    first = client.get(f"/predictions/{prediction_id}/events", buffered=False)
    assert first.status_code == 200
    refused = client.get(f"/predictions/{prediction_id}/events", buffered=False)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    first.close()  # the slot comes back even though the stream was never read
    again = client.get(f"/predictions/{prediction_id}/events", buffered=False)
    assert again.status_code == 200
    again.close()


def test_quiet_stream_sends_heartbeats_and_ends_when_its_time_is_up(fake_redis, sender):
    app = create_app({"TESTING": True, "redis_url": "redis://unused:1/0", "event_heartbeat_s": 0.05,
                      "event_stream_max_s": 1.0}, redis_client=fake_redis, sender=sender)
    client = keyed_client(app)
    response = client.get(f"/predictions/{submit(client)}/events", buffered=False)
    received = list(events(response))
    response.close()
    assert received[0][0] == "status"
    comments = [data for kind, data in received if kind == "comment"]
    assert "heartbeat" in comments
    assert comments[-1].startswith("the stream's time is up")


def test_event_stream_is_in_the_openapi_document(client):
    operation = client.get("/openapi.json").json["paths"]["/predictions/{prediction_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"401", "404", "503"} <= set(operation["responses"])
