"""Prometheus metrics of the API, and `GET /metrics`.

The API runs as several gunicorn processes, so `ferry api` sets PROMETHEUS_MULTIPROC_DIR
(emptied at start) and prometheus_client keeps each process's values in a file there;
`/metrics` adds them up. Without that variable (tests, `flask run`) the values live in
this process. Worker metrics and queue depths come from Redis (`tasks.metrics`).
"""
from __future__ import annotations

import os
import time

from flask import Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)

from tasks.metrics import RedisCollector

HTTP_REQUESTS = Counter("ferry_http_requests", "HTTP requests answered, by route and status.",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("ferry_http_request_duration_seconds",
                         "Time to answer an HTTP request (to the first byte, for streams).", ["method", "route"])
CACHE_HITS = Counter("ferry_cache_hits", "Submits answered from the prediction cache.", ["model"])
CACHE_MISSES = Counter("ferry_cache_misses", "Submits not found in the prediction cache.", ["model"])
SUBMITTED = Counter("ferry_predictions_submitted", "Predictions queued for a worker.", ["model"])


# Any other method a caller makes up is counted as "other": a label per made-up method would
# let anyone, without a key, add time series to /metrics and memory to each process.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route() -> str:
    # The rule, never the path: ids in paths would make a time series per prediction.
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _started() -> None:
    g.metrics_started = time.perf_counter()


# prometheus_client resolves labels under a lock on every `labels()` call; the few
# (method, route, status) combinations a process sees are resolved once and kept.
_children: dict[tuple, tuple] = {}


def answered(method: str, route: str, status: int, elapsed_s: float) -> None:
    """Count one answered request (Flask's, or a submit's beneath it: app/fast_path.py)."""
    known = _children.get((method, route, status))
    if known is None:
        known = _children[(method, route, status)] = (HTTP_LATENCY.labels(method, route),
                                                       HTTP_REQUESTS.labels(method, route, str(status)))
    known[0].observe(elapsed_s)
    known[1].inc()


def _answered(response):
    started = g.pop("metrics_started", None)
    if started is not None:
        method = request.method if request.method in _METHODS else "other"
        answered(method, _route(), response.status_code, time.perf_counter() - started)
    return response


def exposition(services) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own = CollectorRegistry()
        multiprocess.MultiProcessCollector(own)
    else:
        own = REGISTRY
    shared = CollectorRegistry(auto_describe=False)
    shared.register(RedisCollector(services.redis, services.settings.key_prefix, services.registry))
    return generate_latest(own) + generate_latest(shared)


def init_app(app) -> None:
    from app.services import services

    app.before_request(_started)
    app.after_request(_answered)

    @app.get("/metrics")
    def metrics():
        return Response(exposition(services()), content_type=CONTENT_TYPE_LATEST)
