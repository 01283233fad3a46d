"""Python client of the Ferry model server.

    from ferry_client import FerryClient

    ferry = FerryClient("http://127.0.0.1:8000", api_key="ferry_...")
    output = ferry.predict("digits", {"pixels": [...]})           # submit and wait: the output
    prediction = ferry.submit("pi", {"rounds": 10})                 # queued (or done, when cached)
    done = ferry.wait(prediction["id"], timeout_s=60)               # follows its events, or polls

Answers 429 and 503 are retried after their Retry-After (urllib3's Retry), so a caller
that outruns its rate limit or meets a Redis restart slows down instead of failing.
It depends on requests only, never on the server's code.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import quote

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = ["FerryClient", "FerryError", "PredictionFailed", "TERMINAL"]

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class FerryError(Exception):
    """The API answered with an error: `status`, and its body `{code, status, message, errors}`."""

    def __init__(self, status: int, body):
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status}: {message or body}")


class PredictionFailed(Exception):
    """The prediction ended as failed or canceled; `prediction` holds its record."""

    def __init__(self, prediction: dict):
        self.prediction = prediction
        super().__init__(f"prediction {prediction.get('id')} {prediction['status']}: {prediction.get('error')}")


class FerryClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, *,
                 timeout_s: float = 10.0, retries: int = 5, backoff_s: float = 0.5, poll_interval_s: float = 0.5,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        # Only answers that say "not now" are retried, and failed connections (nothing was
        # sent); never a request that may have reached the server (read=0), so a submit is
        # never made twice. Retry-After is honoured; without it the wait doubles from backoff_s.
        retry = Retry(total=retries, connect=retries, read=0, status=retries, other=0,
                      status_forcelist=(429, 503), allowed_methods=None, backoff_factor=backoff_s,
                      respect_retry_after_header=True, raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def _call(self, method: str, path: str, **kwargs):
        response = self.session.request(method, self.base_url + path, timeout=kwargs.pop("timeout", self.timeout_s),
                                        **kwargs)
        body = response.json() if "json" in response.headers.get("Content-Type", "") else response.text
        if not response.ok:
            raise FerryError(response.status_code, body)
        return body

    def models(self) -> list[dict]:
        return self._call("GET", "/models")

    def submit(self, model: str, input: dict, **options) -> dict:
        """Queue a prediction; its record (status `queued`), or the output at once (`cached`)."""
        return self._call("POST", f"/models/{quote(model, safe='')}/predictions", json={"input": input, **options})

    def get(self, prediction_id: str) -> dict:
        return self._call("GET", f"/predictions/{quote(prediction_id, safe='')}")

    def events(self, prediction_id: str, read_timeout_s: float = 30.0) -> Iterator[tuple[str, dict]]:
        """(`status` or `progress`, prediction) as the server sends them, until it is done.
        Raises FerryError when the stream is refused (503: too many streams; poll instead)."""
        for kind, data in self._stream(prediction_id, read_timeout_s):
            if kind != "comment":
                yield kind, data

    def _stream(self, prediction_id: str, read_timeout_s: float) -> Iterator[tuple[str, dict | None]]:
        """The events, and ("comment", None) for each comment (the server's heartbeats)."""
        url = f"{self.base_url}/predictions/{quote(prediction_id, safe='')}/events"
        # Not through the retrying adapter: a refused stream is a cue to poll, not to wait.
        with requests.get(url, headers={**self.session.headers, "Accept": "text/event-stream"}, stream=True,
                          timeout=(self.timeout_s, read_timeout_s)) as response:
            if not response.ok:
                body = response.json() if "json" in response.headers.get("Content-Type", "") else response.text
                raise FerryError(response.status_code, body)
            kind, data = "message", []
            for line in _lines(response.raw):
                if line.startswith(":"):
                    yield "comment", None
                    continue
                if line:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        kind = value
                    elif field == "data":
                        data.append(value)
                    continue
                if data and kind in ("status", "progress"):
                    yield kind, json.loads("\n".join(data))
                kind, data = "message", []

    def wait(self, prediction_id: str, timeout_s: float = 60.0) -> dict:
        """The prediction once it is done (whatever its status). Follows its event stream,
        and polls when the stream is refused or breaks. TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        try:
            # Heartbeats too: a quiet stream must not keep the caller past its deadline.
            for kind, prediction in self._stream(prediction_id, read_timeout_s=min(30.0, timeout_s)):
                if kind != "comment" and prediction["status"] in TERMINAL:
                    return prediction
                if time.monotonic() > deadline:
                    break
        except FerryError as exc:
            if exc.status in (401, 403, 404):
                raise
        except requests.RequestException:
            pass  # the stream broke: polling takes over
        while True:
            prediction = self.get(prediction_id)
            if prediction["status"] in TERMINAL:
                return prediction
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"prediction {prediction_id} still {prediction['status']} after {timeout_s:g} s")
            time.sleep(min(self.poll_interval_s, remaining))

    def predict(self, model: str, input: dict, timeout_s: float = 60.0, **options) -> dict:
        """Submit and wait: the output. PredictionFailed when it failed or was canceled."""
        prediction = self.submit(model, input, **options)
        if prediction["status"] not in TERMINAL:
            prediction = self.wait(prediction["id"], timeout_s)
        if prediction["status"] != "succeeded":
            raise PredictionFailed(prediction)
        return prediction["output"]


def _lines(raw) -> Iterator[str]:
    """The lines of a streamed body as they arrive. `iter_lines` waits for 512 bytes (or the
    end) before it hands over a line: an event, or a heartbeat, sat unseen until more came."""
    pending = b""
    while True:
        try:
            data = raw.read1(65536, decode_content=True)
        except urllib3.exceptions.HTTPError as exc:  # as requests' own reading would say it
            raise requests.ConnectionError(exc) from exc
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode()
    if pending:
        yield pending.rstrip(b"\r").decode()
