"""The Python client's retries, against a small HTTP server that says "not now" first."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from ferry_client import FerryClient, FerryError, PredictionFailed


class Handler(BaseHTTPRequestHandler):
    def answer(self, status: int, body, headers=None):
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler):
    """The base URL of `handler` served on a free port, from a thread."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class Scripted(Handler):
    """Answers POSTs from `script` in turn (status, headers, body), and records each."""

    script: list = []
    seen: list = []

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.seen.append((self.path, self.headers.get("Authorization"), json.loads(self.rfile.read(length))))
        status, headers, body = self.script.pop(0)
        self.answer(status, body, headers)


@pytest.fixture
def server():
    Scripted.script, Scripted.seen = [], []
    with serving(Scripted) as url:
        yield url


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


class Quiet(Handler):
    """A prediction that stays queued: one status event; then, once the client has seen it
    (`seen`, or after 5 s), a heartbeat every 0.1 s for ten seconds. `streams` records, for
    each stream, whether the client saw the event before anything else came, and whether it
    read the stream to its end."""

    seen = threading.Event()
    streams: list = []
    silent = False

    def do_GET(self):
        if self.path.endswith("/events"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            try:
                self.wfile.write(b'event: status\ndata: {"id": "q", "status": "queued"}\n\n')
                self.wfile.flush()
                prompt = self.seen.wait(5)
                if self.silent:
                    time.sleep(3)  # then the stream ends
                for _ in range(0 if self.silent else 100):
                    self.wfile.write(b": heartbeat\n\n")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client hung up
                self.streams.append((prompt, "left"))
                return
            self.streams.append((prompt, "read to the end"))
            return
        self.answer(200, {"id": "q", "status": "queued"})


@pytest.fixture
def quiet():
    Quiet.seen.clear()
    Quiet.streams, Quiet.silent = [], False
    with serving(Quiet) as url:
        yield FerryClient(url, poll_interval_s=0.05)


def _stream_ended():
    for _ in range(100):
        if Quiet.streams:
            return Quiet.streams
        time.sleep(0.1)
    return Quiet.streams


def test_events_are_seen_as_they_are_sent(quiet):
    for kind, prediction in quiet.events("q"):
        assert (kind, prediction) == ("status", {"id": "q", "status": "queued"})
        Quiet.seen.set()
        break
    # Seen before a heartbeat followed it: not held back until more bytes came.
    assert _stream_ended() == [(True, "left")]


def test_wait_gives_up_at_its_timeout_while_the_stream_only_sends_heartbeats(quiet):
    Quiet.seen.set()
    with pytest.raises(TimeoutError, match="still queued after 0.5 s"):
        quiet.wait("q", timeout_s=0.5)
    # The client hung up at its deadline, not after the stream's ten seconds of heartbeats.
    assert _stream_ended() == [(True, "left")]


def test_wait_polls_when_the_stream_goes_silent_past_its_read_timeout(quiet):
    Quiet.seen.set()
    Quiet.silent = True  # no heartbeat within the read timeout: the stream counts as broken
    with pytest.raises(TimeoutError, match="still queued after 1 s"):
        quiet.wait("q", timeout_s=1)
    with pytest.raises(requests.ConnectionError):  # events() says so as requests does
        for _ in quiet._stream("q", read_timeout_s=0.5):
            pass
