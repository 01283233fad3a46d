"""Rate limits per API key: flask-limiter, counted in the API's own Redis.

One budget per key across every guarded and open route (`FERRY_RATE_LIMIT`, e.g.
"100/second;3000/minute"); a request without a valid key counts against its address.
Health probes, metrics and the API's documentation are never limited. Past the budget: 429 with
`Retry-After`, in the one error body.

    {prefix}ratelimit:{LIMITER/key:{id}/...}    sliding-window counters; they expire by themselves
"""
from __future__ import annotations

import math
import time

from flask import jsonify, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many

from app.auth import current_key
from app.errors import error_body

# Probes and scrapes must answer while a caller floods the API, and the docs and the
# dashboard's own files say how to call it.
UNLIMITED = frozenset({"health", "metrics", "api-docs", "swagger_ui_static", "dashboard", "static"})


def rate_key() -> str:
    api_key = current_key()
    return f"key:{api_key.id}" if api_key is not None else f"addr:{request.remote_addr}"


def init_app(app, settings, redis_client) -> Limiter:
    try:
        parse_many(settings.rate_limit)
    except ValueError:
        raise ValueError(f"FERRY_RATE_LIMIT={settings.rate_limit!r} is not a rate limit such as "
                         "'100/second;3000/minute'.") from None
    limiter = Limiter(
        key_func=rate_key,
        application_limits=[settings.rate_limit],
        strategy="sliding-window-counter",
        # The API's own connection pool: same Redis, same timeouts; a Redis outage is the usual 503.
        storage_uri="redis://",
        storage_options={"connection_pool": redis_client.connection_pool,
                         "key_prefix": f"{settings.key_prefix}ratelimit"},
        # Headers on every answer would cost a second round trip each; Retry-After is set on 429.
        headers_enabled=False,
    )
    limiter.request_filter(lambda: (request.endpoint or "").split(".")[0] in UNLIMITED)
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def too_many_requests(exc: RateLimitExceeded):
        current = limiter.current_limit
        retry_after = max(1, math.ceil(current.reset_at - time.time())) if current is not None else 1
        caller = "this API key" if current_key() is not None else "this address (no valid API key)"
        body = error_body(exc, f"Too many requests from {caller}: the limit is {exc.description}. "
                               f"Retry after {retry_after} s.")
        return jsonify(body), 429, {"Retry-After": str(retry_after)}

    return limiter
