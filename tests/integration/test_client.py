"""The Python client against the live API (served over HTTP) and a real worker."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from ferry_client import FerryClient
from werkzeug.serving import make_server

from app import create_app
from tests.integration.conftest import ADMIN_KEY
from tests.processes import ROOT
from tests.support import test_split

pytestmark = pytest.mark.integration


def serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def api(live_app):
    server, url = serve(live_app)
    yield url
    server.shutdown()


def test_predict_returns_the_output(api, api_key):
    x_test, y_test = test_split()
    client = FerryClient(api, api_key=api_key)
    output = client.predict("digits", {"pixels": [float(v) for v in x_test[21]]}, timeout_s=60)
    assert output["label"] == int(y_test[21])
    assert {"digits", "pi"} <= {model["name"] for model in client.models()}


def test_wait_follows_the_event_stream(api, api_key):
    client = FerryClient(api, api_key=api_key)
    # Progress comes between rounds: long enough apart for the stream to connect on a busy machine.
    submitted = client.submit("pi", {"rounds": 4, "points_per_round": 1000, "pause_s": 0.5, "seed": 3})
    assert submitted["status"] == "queued"
    kinds = [kind for kind, _ in client.events(submitted["id"])]
    assert kinds[0] == "status" and "progress" in kinds
    done = client.wait(submitted["id"], timeout_s=60)
    assert done["status"] == "succeeded" and done["output"]["points"] == 4000


def test_wait_polls_when_the_server_refuses_streams(redis_url, worker, repository_file, data_dir, api_key):
    app = create_app({"TESTING": True, "redis_url": redis_url, "model_repository": str(repository_file),
                      "data_dir": str(data_dir), "admin_key": ADMIN_KEY, "max_event_streams": 0})
    server, url = serve(app)
    try:
        client = FerryClient(url, api_key=api_key, poll_interval_s=0.05)
        output = client.predict("pi", {"rounds": 2, "points_per_round": 1000, "pause_s": 0, "seed": 4}, timeout_s=60)
        assert output["points"] == 2000
    finally:
        server.shutdown()


def test_the_client_needs_neither_the_server_nor_torch():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, ferry_client; print(' '.join(sorted(sys.modules)))"],
        cwd=ROOT / "clients" / "python", capture_output=True, text=True, check=True).stdout.split()
    assert not {"torch", "app", "tasks", "models", "flask", "celery"} & {name.split(".")[0] for name in loaded}
