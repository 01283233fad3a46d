"""gunicorn's configuration for `ferry api` (`--config <this file>`).

gunicorn refuses some requests itself, before Flask sees them: a request line longer than
`limit_request_line` (414), more or larger headers than allowed (431), malformed HTTP
(400). It answers those with an HTML page; here they get the API's one error body.
"""
from __future__ import annotations

import json

from gunicorn import util

# Bounds on what comes before the body (gunicorn's defaults, stated as part of the API's
# bounds); the body itself is bounded by FERRY_MAX_CONTENT_LENGTH in Flask.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    body = json.dumps({"code": status_int, "status": reason, "message": mesg or reason, "errors": {}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


# gunicorn writes these answers through this one function (its workers call it by module).
util.write_error = write_json_error
