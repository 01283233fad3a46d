"""Logging for every Ferry process: text or JSON lines that carry the ids of the work.

`request_id` (the API request that submitted a prediction, from `X-Request-ID` or made
up) and `prediction_id` live in context variables: the API sets them per request, the
worker per task from the prediction's record, so a line written anywhere in between,
by Ferry or by a library, says which request and prediction it belongs to.
"""
from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
prediction_id: contextvars.ContextVar[str] = contextvars.ContextVar("prediction_id", default="")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [request=%(request_id)s prediction=%(prediction_id)s] %(message)s"
JSON_FIELDS = "{asctime}{levelname}{name}{message}{request_id}{prediction_id}{process}"
FORMATS = ("text", "json")


class ContextFilter(logging.Filter):
    """Adds the ids in context to each record, unless the call gave its own (`extra=`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id.get() or "-"
        if not getattr(record, "prediction_id", None):
            record.prediction_id = prediction_id.get() or "-"
        return True


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, style="{", rename_fields={
            "asctime": "time", "levelname": "level", "name": "logger"})
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"FERRY_LOG_FORMAT={log_format!r}: use one of {', '.join(FORMATS)}.")


def configure(log_format: str, level: str | int) -> None:
    """One handler on the root logger, to stderr, in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "ferry", False)]:
        root.removeHandler(old)
    handler.ferry = True
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
