"""Live progress with a real worker: the `pi` example model over server-sent events."""
from __future__ import annotations

import pytest

from tests.unit.test_events import events

pytestmark = pytest.mark.integration


def test_pi_streams_running_progress_partial_outputs_and_its_result(live_client):
    submitted = live_client.post("/models/pi/predictions", json={"input": {
        "rounds": 5, "points_per_round": 20000, "pause_s": 0.2, "seed": 7}})
    assert submitted.status_code == 202, submitted.json
    response = live_client.get(f"{submitted.headers['Location']}/events", buffered=False)
    assert response.status_code == 200
    try:
        received = [(kind, data) for kind, data in events(response) if kind != "comment"]
    finally:
        response.close()
    statuses = [data["status"] for kind, data in received if kind == "status"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    partials = [data["partial_output"] for kind, data in received if kind == "progress" and data["partial_output"]]
    assert partials, received
    assert all(0 < data["progress"] <= 1 for kind, data in received if kind == "progress" and data["progress"])
    final = received[-1][1]
    assert final["progress"] == 1.0 and final["output"]["points"] == 100000
    assert abs(final["output"]["estimate"] - 3.14159) < 0.1
