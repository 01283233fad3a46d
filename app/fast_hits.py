"""Cache hits of bodies seen before, answered beneath Flask.

A popular input comes back byte for byte, and its answer is already known: what takes the
time is Flask's and flask-smorest's per-request machinery (the request context, hooks, the
view's decorator stack), which costs a hit more than its Redis round trip. So a submit whose
body was a cache hit before (`remember`, called by the view's hit path once it has validated
the body) is answered here, by a WSGI layer in front of Flask, with what the view would do:
the same key check (the per-process key cache, the `predict` scope), the same rate-limit
script and cache read in one round trip, the popularity count, the request log entry, the
metrics, the `X-Request-ID` header and the same response bytes.

Anything else goes on to Flask untouched (the body it read is handed on), which then does
what it always did: another body, an `Idempotency-Key`, no JSON content type, no valid key
or scope, a chunked or large body, a body whose cached answer expired (nothing counted here:
the rate-limit script counts the request only when the entry exists), a model or version the
registry no longer resolves to the same spec, a refusal of the rate limit (nothing counted
either) or Redis away. Flask's answers to those (401, 403, 404, 413, 415, 422, 429, 503,
202) are the only ones, so they stay as they were.
"""
from __future__ import annotations

import functools
import io
import re
import time

import orjson
import redis

from app import auth, metrics, ratelimit, request_ids
from app.keys import PREDICT
from models.registry import UnknownModel
from tasks import logs, records

# The route's rule (metrics label it so), and the paths it matches that this layer takes:
# names of plain ASCII, so that no decoding of the path can differ from Flask's.
ROUTE = "/models/<name>/predictions"
_PATH = re.compile(r"/models/([A-Za-z0-9._-]+)/predictions")

# Small bodies that were cache hits, and what validating them gave: a popular input comes
# back byte for byte, and validating it (64 numbers for digits) costs more than the rest of
# a hit. An entry is used only while the registry still resolves its model and version to
# the same spec (a new default version or a re-registration starts afresh); only hits are
# kept, so a flood of distinct inputs cannot push the popular ones out for long.
_HIT_BODIES: dict[tuple[str, bytes], tuple] = {}  # (model, body) -> (version asked, spec, validated, cache key)
_HIT_BODIES_MAX, _HIT_BODY_BYTES = 1024, 4096


def remember(name: str, body: bytes, spec, validated: dict, cache_key: str) -> None:
    """Keep a body that was just validated and answered from the cache, if it is small."""
    if len(body) > _HIT_BODY_BYTES:
        return
    if len(_HIT_BODIES) >= _HIT_BODIES_MAX:
        _HIT_BODIES.clear()
    _HIT_BODIES[(name, body)] = (orjson.loads(body).get("version"), spec, validated, cache_key)


def _remembered(registry, name: str, body: bytes) -> tuple | None:
    """(spec, validated input, cache key) of a remembered body, while its spec still serves."""
    known = _HIT_BODIES.get((name, body))
    if known is None:
        return None
    asked, spec, validated, cache_key = known
    try:
        if registry.get(name, asked) is spec:
            return spec, validated, cache_key
    except UnknownModel:
        pass
    _HIT_BODIES.pop((name, body), None)  # the model changed: validated afresh by the view
    return None


@functools.lru_cache(maxsize=256)
def _hit_prefix(model: str, version: str) -> bytes:
    head = orjson.dumps({"model": model, "version": version, "status": records.SUCCEEDED, "cached": True})
    return head[:-1] + b',"output":'


def hit_body(spec, raw: str) -> bytes:
    """The body of a cache hit: the cached output is JSON already, spliced in, never parsed."""
    return _hit_prefix(spec.name, spec.version) + raw.encode() + b"}"


def record_hit(ferry, spec, request_id: str, started: float | None) -> None:
    """What a cache hit leaves behind besides its answer: its metric and its request log entry."""
    metrics.CACHE_HITS.labels(spec.name).inc()
    ferry.request_log.later(spec.name, version=spec.version, status=records.SUCCEEDED, cache_hit=True,
                            request_id=request_id,
                            total_ms=None if started is None else (time.perf_counter() - started) * 1000)


def _is_json(content_type: str) -> bool:
    # As werkzeug's `Request.is_json` decides it.
    mimetype = content_type.partition(";")[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


class FastHits:
    """The WSGI layer: answers a remembered body's cache hit, or calls `flask`."""

    def __init__(self, app, flask):
        self.app = app
        self.flask = flask

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST" and "HTTP_IDEMPOTENCY_KEY" not in environ:
            match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None and _is_json(environ.get("CONTENT_TYPE", "")):
                answer = self._answer(environ, match.group(1))
                if answer is not None:
                    start_response("200 OK", answer[0])
                    return [answer[1]]
        return self.flask(environ, start_response)

    def _answer(self, environ, name: str) -> tuple[list, bytes] | None:
        """(headers, body) of a remembered body's cache hit, or None (and the body left for Flask)."""
        started = time.perf_counter()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        # A chunked body has no length: it goes to Flask, which bounds it.
        if not 0 < length <= min(_HIT_BODY_BYTES, self.app.config["MAX_CONTENT_LENGTH"] or _HIT_BODY_BYTES):
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # Flask reads it as it was sent, if it is not answered here
        if (name, body) not in _HIT_BODIES:
            return None
        try:
            return self._hit(environ, name, body, started)
        except (ratelimit.RateLimited, redis.RedisError):
            return None  # refused (nothing was counted) or Redis away: Flask answers 429 or 503, as always

    def _hit(self, environ, name: str, body: bytes, started: float) -> tuple[list, bytes] | None:
        ferry = self.app.extensions["ferry"]
        token = auth.bearer_token_of(environ.get("HTTP_AUTHORIZATION", ""))
        api_key = ferry.keys.lookup(token) if token else None
        if api_key is None or PREDICT not in api_key.scopes:
            return None
        known = _remembered(ferry.registry, name, body)
        if known is None:
            return None
        spec, validated, cache_key = known
        request_id = request_ids.chosen(environ.get("HTTP_X_REQUEST_ID", ""))
        # Log lines written meanwhile (by Ferry or a library) carry the request id, as under Flask.
        tokens = logs.request_id.set(request_id), logs.prediction_id.set("")
        try:
            limiter = self.app.extensions["ferry_ratelimit"]
            raw = limiter.hit(ratelimit.key_identity(api_key), also_get=cache_key, only_found=True)
            if raw is None:  # expired: nothing was counted, and the view validates it afresh
                _HIT_BODIES.pop((name, body), None)
                return None
            ferry.popularity.add(ferry.redis, spec.name, spec.version, validated, cache_key)
            record_hit(ferry, spec, request_id, started)
            answer = hit_body(spec, raw)
            metrics.answered("POST", ROUTE, 200, time.perf_counter() - started)
        finally:
            logs.request_id.reset(tokens[0])
            logs.prediction_id.reset(tokens[1])
        return [("Content-Type", "application/json"), ("Content-Length", str(len(answer))),
                (request_ids.HEADER, request_id)], answer


def install(app) -> None:
    """Put the layer in front of `app`'s WSGI callable (the app factory does, so `ferry api`,
    tests and `make dev` all have it)."""
    app.wsgi_app = FastHits(app, app.wsgi_app)
