"""One error body everywhere: {"code", "status", "message", "errors"}."""
from __future__ import annotations

import logging

import redis
from flask import current_app, jsonify
from flask_smorest import Api
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

log = logging.getLogger(__name__)


def error_body(error: HTTPException, message: str | None = None, errors=None) -> dict:
    return {
        "code": error.code,
        "status": error.name,
        "message": message or error.description or error.name,
        "errors": errors or {},
    }


UNEXPECTED = "An unexpected error occurred; it has been logged."

# Plainer words than werkzeug's defaults where the cause is known.
_MESSAGES = {
    400: "The request body is not valid JSON.",
    413: "The request body is larger than this server accepts ({limit} bytes).",
    415: "Send the body as JSON, with `Content-Type: application/json`.",
    422: "The request body is invalid; `errors` says where.",
}
# A 422's message names what was invalid: `errors` is keyed by where it was.
_INVALID = {"json": "The request body", "query": "The query string", "headers": "A request header",
            "path": "The path", "view_args": "The path"}


class FerryApi(Api):
    """flask-smorest's Api, with `message` and `errors` present in every error body."""

    def handle_http_exception(self, error: HTTPException):
        data = getattr(error, "data", None) or {}
        errors = data.get("errors", data.get("messages"))
        message = data.get("message")
        if message is None and error.code == 422 and isinstance(errors, dict) and errors:
            where = next(iter(errors))
            message = f"{_INVALID.get(where, 'The request')} is invalid; `errors` says where."
        elif message is None and error.code in _MESSAGES and (errors or error.code == 413):
            message = _MESSAGES[error.code].format(limit=current_app.config.get("MAX_CONTENT_LENGTH"))
        payload = error_body(error, message, errors)
        headers = dict(data.get("headers") or {})
        if error.code == 405 and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        return jsonify(payload), error.code, headers


def init_app(app, retry_after_s: int) -> None:
    def backend_unavailable(exc):
        log.warning("backend unavailable: %s", exc)
        error = ServiceUnavailable()
        body = error_body(error, "The queue backend (Redis) is unreachable. Try again shortly.")
        return jsonify(body), 503, {"Retry-After": str(retry_after_s)}

    app.register_error_handler(redis.exceptions.ConnectionError, backend_unavailable)
    app.register_error_handler(redis.exceptions.TimeoutError, backend_unavailable)
    app.register_error_handler(OperationalError, backend_unavailable)

    @app.errorhandler(Exception)
    def unexpected(exc):
        # HTTP errors have their own, more specific handler; this sees only real bugs.
        log.exception("unhandled error")
        body = error_body(InternalServerError(), UNEXPECTED)
        return jsonify(body), 500
