"""Request-body parsing: JSON only, and every malformed body is a 4xx, never a 500."""
from __future__ import annotations

import flask_smorest
from flask_smorest import abort
from webargs.flaskparser import FlaskParser


class JsonBodyParser(FlaskParser):
    def load_json(self, req, schema):
        if not req.is_json and (req.content_length or req.headers.get("Transfer-Encoding")):
            abort(415, message="Send the body as JSON, with `Content-Type: application/json`.")
        try:
            return super().load_json(req, schema)
        except (ValueError, RecursionError) as exc:
            # Numbers past Python's digit limit and absurdly deep nesting are malformed too.
            return self._handle_invalid_json_error(exc, req)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = JsonBodyParser()
