"""Every request has an id: the caller's `X-Request-ID` when it is sane, else a new one.

It is returned in the `X-Request-ID` header, written into the logs (tasks.logs) and
stored with a prediction it submits, so the worker's log lines carry it too.
"""
from __future__ import annotations

import re
import uuid

from flask import g, request

from tasks import logs

HEADER = "X-Request-ID"
ENVIRON = "ferry.request_id"
# Ids from callers go into logs and records: short, and nothing that could forge a log line.
_SANE = re.compile(r"^[A-Za-z0-9._:+/=-]{1,128}$")


def current() -> str:
    return g.get("request_id", "")


def chosen(given: str) -> str:
    """The id of a request that sent `given` as its `X-Request-ID` (or "")."""
    return given if _SANE.match(given) else uuid.uuid4().hex


def _assign() -> None:
    # A request handed on by the layer beneath Flask (app/fast_path.py) keeps the id it chose there.
    g.request_id = request.environ.get(ENVIRON) or chosen(request.headers.get(HEADER, ""))
    g.log_tokens = (logs.request_id.set(g.request_id), logs.prediction_id.set(""))


def _echo(response):
    if "request_id" in g:
        response.headers[HEADER] = g.request_id
    return response


def _forget(exc) -> None:
    tokens = g.pop("log_tokens", None)
    if tokens is not None:
        logs.request_id.reset(tokens[0])
        logs.prediction_id.reset(tokens[1])


def init_app(app) -> None:
    app.before_request(_assign)
    app.after_request(_echo)
    app.teardown_request(_forget)
