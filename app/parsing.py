"""The project's Blueprint: JSON-only body parsing (every malformed body is a 4xx, never a
500) and `requires(scope)`, which guards a view with an API key and documents it."""
from __future__ import annotations

import flask_smorest
from flask_smorest import abort
from flask_smorest.error_handler import ErrorSchema
from webargs.flaskparser import FlaskParser

from app.auth import SECURITY_SCHEME, require_scope


class JsonBodyParser(FlaskParser):
    def load_json(self, req, schema):
        if not req.is_json and (req.content_length or req.headers.get("Transfer-Encoding")):
            abort(415, message="Send the body as JSON, with `Content-Type: application/json`.")
        limit = req.max_content_length
        if req.content_length is None and limit is not None and len(req.get_data(cache=True)) >= limit:
            # A chunked body has no length to refuse up front; werkzeug stops reading it at
            # the limit, and the cut-off JSON would otherwise read as malformed (400).
            abort(413)
        try:
            return super().load_json(req, schema)
        except (ValueError, RecursionError) as exc:
            # Numbers past Python's digit limit and absurdly deep nesting are malformed too.
            return self._handle_invalid_json_error(exc, req)


RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JsonBodyParser()

    def requires(self, scope: str):
        """Decorator, outermost on a view: it runs only for an API key with `scope`
        (401 without a valid key, 403 without the scope), and the OpenAPI document says so,
        with the 429 of the key's rate limit (app/ratelimit.py)."""

        def decorator(func):
            guarded = require_scope(scope)(func)
            for status, description in (
                (401, "No API key, or one that is unknown or revoked."),
                (403, f"The API key lacks the `{scope}` scope."),
            ):
                guarded = self.alt_response(status, schema=ErrorSchema, description=description)(guarded)
            guarded = self.alt_response(429, schema=ErrorSchema, headers=RETRY_AFTER,
                                        description="Over the key's rate limit; retry after `Retry-After` seconds.")(guarded)
            return self.doc(security=[{SECURITY_SCHEME: []}])(guarded)

        return decorator
