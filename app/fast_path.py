"""Plain submits, answered beneath Flask.

Most submits are a small `{"input": {...}}` body with a key: a cache hit, or a new
prediction queued (and, with `Prefer: wait`, waited for). Flask's and flask-smorest's
per-request machinery (the request context, hooks, the decorator stack, the request parser
and the response schema) costs more CPU than the work itself, and on a machine that also
runs the model, that CPU is taken from the forward pass. So a WSGI layer in front of Flask
answers those itself, with what the view does:

- the same key check (the per-process key cache, the `predict` scope);
- the same validation (`predictions.glance`; a body that was a hit before is remembered,
  with its validated input, while its model version still resolves to the same spec);
- the same rate-limit script and cache read in one round trip;
- the popularity count, and for a hit the request log entry;
- for a miss, the same `predictions.queue_prediction` (record and Celery message in one
  step, the wait), when it creates a prediction;
- the metrics, the `X-Request-ID` header and the same response bytes.

Anything else goes on to Flask with the body it read handed on, and Flask does what it
always did: an `Idempotency-Key`, no JSON content type, no valid key or scope, a chunked or
large body, a body that is not plain or not valid (every 4xx, with Flask's error body), a
refusal of the rate limit (nothing counted here) or Redis away. A submit counted here that
does not create a prediction (it joins an identical one in flight, or the queue is full)
goes on too, marked so that Flask neither counts it again nor reads the cache again
(`ratelimit.MISSED_BENEATH`).
"""
from __future__ import annotations

import functools
import io
import logging
import re
import time

import orjson
import redis
from kombu.exceptions import OperationalError
from werkzeug.exceptions import InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from app import auth, errors, metrics, ratelimit, request_ids
from app.keys import PREDICT
from app.resources import predictions
from models.registry import UnknownModel
from tasks import logs, records

log = logging.getLogger(__name__)

# The route's rule (metrics label it so), and the paths it matches that this layer takes:
# names of plain ASCII, so that no decoding of the path can differ from Flask's.
ROUTE = "/models/<name>/predictions"
_PATH = re.compile(r"/models/([A-Za-z0-9._-]+)/predictions")

# Bodies larger than this go to Flask: a plain submit is small, and Flask bounds the rest.
_BODY_BYTES = 64 * 1024

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


class FastPath:
    """The WSGI layer: answers a plain submit, or calls `flask`."""

    def __init__(self, app, flask):
        self.app = app
        self.flask = flask

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST" and "HTTP_IDEMPOTENCY_KEY" not in environ:
            match = _PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None and _is_json(environ.get("CONTENT_TYPE", "")):
                answer = self._answer(environ, match.group(1))
                if answer is not None:
                    start_response(*answer[:2])
                    return [answer[2]]
        return self.flask(environ, start_response)

    def _answer(self, environ, name: str) -> tuple[str, list, bytes] | None:
        """(status, headers, body) of a plain submit, or None (and the body left for Flask)."""
        started = time.perf_counter()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        # A chunked body has no length: it goes to Flask, which bounds it.
        if not 0 < length <= min(_BODY_BYTES, self.app.config["MAX_CONTENT_LENGTH"] or _BODY_BYTES):
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)  # Flask reads it as it was sent, if it is not answered here
        request_id = environ[request_ids.ENVIRON] = request_ids.chosen(environ.get("HTTP_X_REQUEST_ID", ""))
        # Log lines written meanwhile (by Ferry or a library) carry the request id, as under Flask.
        tokens = logs.request_id.set(request_id), logs.prediction_id.set("")
        try:
            answer = self._submit(environ, name, body, request_id, started)
        except (ratelimit.RateLimited, redis.RedisError, OperationalError):
            # Refused (nothing was counted), or Redis or the broker away: Flask answers 429 or 503, as always.
            return None
        except Exception:
            # A bug: answered as Flask answers one (errors.py), not handed on, as a prediction may exist.
            log.exception("unhandled error")
            answer = 500, [], self.app.json.response(
                errors.error_body(InternalServerError(), errors.UNEXPECTED)).get_data()
        finally:
            logs.request_id.reset(tokens[0])
            logs.prediction_id.reset(tokens[1])
        if answer is None:
            return None
        status, more, content = answer
        metrics.answered("POST", ROUTE, status, time.perf_counter() - started)
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(content))), *more,
                   (request_ids.HEADER, request_id)]
        # As werkzeug words a status line.
        return f"{status} {HTTP_STATUS_CODES[status].upper()}", headers, content

    def _submit(self, environ, name: str, body: bytes, request_id: str, started: float):
        """(status, headers besides the content's and the request id's, body) or None."""
        ferry = self.app.extensions["ferry"]
        token = auth.bearer_token_of(environ.get("HTTP_AUTHORIZATION", ""))
        api_key = ferry.keys.lookup(token) if token else None
        if api_key is None or PREDICT not in api_key.scopes:
            return None
        known = _remembered(ferry.registry, name, body) if len(body) <= _HIT_BODY_BYTES else None
        if known is None:
            glanced = predictions.glance(ferry.registry, name, body)
            if glanced is None:
                return None  # not plain, or not valid: Flask says why
            spec, validated = glanced
            cache_key = ferry.cache.key(spec.name, spec.cache_version, validated)
        else:
            spec, validated, cache_key = known
        limiter = self.app.extensions["ferry_ratelimit"]
        raw = limiter.hit(ratelimit.key_identity(api_key), also_get=cache_key)
        if raw is None:  # counted: if it goes on to Flask from here, Flask counts it no more
            environ[ratelimit.MISSED_BENEATH] = (validated, cache_key)
        ferry.popularity.add(ferry.redis, spec.name, spec.version, validated, cache_key)
        if raw is not None:
            if known is None:
                remember(name, body, spec, validated, cache_key)
            record_hit(ferry, spec, request_id, started)
            return 200, [], hit_body(spec, raw)
        if known is not None:  # expired
            _HIT_BODIES.pop((name, body), None)
        wait_s = predictions.wait_asked(environ.get("HTTP_PREFER", ""), ferry.settings.max_wait_s)
        outcome, _, record, headers = predictions.queue_prediction(
            ferry, spec, validated, cache_key, owner=api_key.id, request_id=request_id, wait_s=wait_s,
            script_root=environ.get("SCRIPT_NAME", "").rstrip("/"))
        if outcome != "created":
            return None  # joined one in flight, or the queue is full: Flask answers, counting nothing again
        metrics.CACHE_MISSES.labels(spec.name).inc()
        status = 200 if record["status"] in records.TERMINAL else 202
        content = predictions.rendered(self.app, record).get_data()
        return status, list(headers.items()), content


def install(app) -> None:
    """Put the layer in front of `app`'s WSGI callable (the app factory does, so `ferry api`,
    tests and `make dev` all have it)."""
    app.wsgi_app = FastPath(app, app.wsgi_app)
