"""The Python client's retries, against a small HTTP server that says "not now" first."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ferry_client import FerryClient, FerryError, PredictionFailed


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from `script` in turn (status, headers, body), and records each."""

    script: list = []
    seen: list = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.seen.append((self.path, self.headers.get("Authorization"), json.loads(self.rfile.read(length))))
        status, headers, body = self.script.pop(0)
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Scripted.script, Scripted.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def error(status: int) -> dict:
    return {"code": status, "status": "x", "message": "not now", "errors": {}}


def test_submit_is_retried_after_429_and_503_honouring_retry_after(server):
    Scripted.script = [(429, {"Retry-After": "0"}, error(429)), (503, {"Retry-After": "0"}, error(503)),
                       (202, {}, {"id": "abc", "status": "queued"})]
    client = FerryClient(server, api_key="secret", backoff_s=0)
    assert client.submit("digits", {"pixels": [1]}) == {"id": "abc", "status": "queued"}
    assert Scripted.seen == [("/models/digits/predictions", "Bearer secret", {"input": {"pixels": [1]}})] * 3


def test_retries_end_with_the_last_error(server):
    Scripted.script = [(503, {"Retry-After": "0"}, error(503))] * 3
    client = FerryClient(server, retries=2, backoff_s=0)
    with pytest.raises(FerryError) as caught:
        client.submit("digits", {})
    assert caught.value.status == 503 and caught.value.body["message"] == "not now"
    assert len(Scripted.seen) == 3


def test_other_errors_are_not_retried(server):
    Scripted.script = [(422, {}, {**error(422), "errors": {"json": {"input": {"pixels": ["bad"]}}}})]
    with pytest.raises(FerryError) as caught:
        FerryClient(server).submit("digits", {})
    assert caught.value.status == 422 and "pixels" in caught.value.body["errors"]["json"]["input"]
    assert len(Scripted.seen) == 1


def test_predict_raises_when_the_prediction_failed(server):
    Scripted.script = [(200, {}, {"id": "abc", "status": "failed", "error": "ValueError: bad input"})]
    with pytest.raises(PredictionFailed, match="bad input") as caught:
        FerryClient(server).predict("digits", {})
    assert caught.value.prediction["status"] == "failed"
