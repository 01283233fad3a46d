"""Submitting predictions and reading them back."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
from datetime import datetime, timezone

import orjson
import redis
from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import ValidationError

from app import fast_path, metrics, ratelimit, request_ids
from app.auth import current_key, owned_or_404
from app.keys import PREDICT
from app.events import PredictionEvents
from app.parsing import Blueprint
from app.resources.models import spec_or_404
from app.schemas import ErrorSchema, PredictionSchema, SubmitSchema
from app.services import services
from models.registry import UnknownModel
from tasks import logs, records

log = logging.getLogger(__name__)
blp = Blueprint("predictions", __name__, description="Submit predictions and follow them to their result.")

_SUBMIT, _PREDICTION = SubmitSchema(), PredictionSchema()
# A number and nothing more up to the next preference: `wait=1e9` is not one, and is ignored
# (RFC 7240) rather than read as `wait=1`.
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\"?)(\d+(?:\.\d+)?)\1\s*(?:[,;]|$)", re.IGNORECASE)


def prefer_wait(max_wait_s: float) -> float:
    """Seconds this request asks for with `Prefer: wait=N`, capped; 0 when not asked."""
    return wait_asked(request.headers.get("Prefer", ""), max_wait_s)


def wait_asked(prefer: str, max_wait_s: float) -> float:
    """Seconds asked for by a `Prefer` header's `wait=N` (RFC 7240), capped; 0 when not asked."""
    match = _PREFER_WAIT.search(prefer)
    return min(float(match.group(2)), max_wait_s) if match else 0.0


def timestamp(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), tz=timezone.utc) if value else None


def _millis(start: str | None, end: str | None) -> float | None:
    return round((float(end) - float(start)) * 1000, 3) if start and end else None


def _progress(record: dict) -> float | None:
    if record["status"] == records.SUCCEEDED:
        return 1.0
    return float(record["progress"]) if record.get("progress") else None


def view(record: dict, queue_position: int | None = None) -> dict:
    """A stored record as the API shows it: no input echo, parsed output, timings."""
    running = record["status"] == records.RUNNING
    return {
        "id": record["id"],
        "model": record["model"],
        "version": record["version"],
        "status": record["status"],
        "cached": False,
        "queue_position": queue_position,
        "progress": _progress(record),
        "partial_output": json.loads(record["partial"]) if running and record.get("partial") else None,
        "output": orjson.loads(record["output"]) if record.get("output") else None,
        "error": record.get("error"),
        "batch_size": int(record["batch_size"]) if record.get("batch_size") else None,
        "timings": {
            "queued_at": timestamp(record.get("queued_at")),
            "started_at": timestamp(record.get("started_at")),
            "finished_at": timestamp(record.get("finished_at")),
            "queue_ms": _millis(record.get("queued_at"), record.get("started_at")),
            "run_ms": _millis(record.get("started_at"), record.get("finished_at")),
        },
    }


def known_model(view):
    """An unknown model is 404 whatever the body, so check it before the body is parsed."""

    @functools.wraps(view)
    def wrapper(*args, name: str, **kwargs):
        spec_or_404(name)
        return view(*args, name=name, **kwargs)

    return wrapper


def cache_hits_first(view):
    """The hot path: a cache hit is answered here, after the key and the model are checked
    but before the request parser and the response schema run, with the same validation,
    cache key and cache read as the view. Anything else (a miss, a body it does not take
    at a glance, an invalid input) goes on to the view, which reuses what was learned here
    or reports the error. A small body answered here is remembered, and answered beneath
    Flask when it comes again (app/fast_path.py)."""

    @functools.wraps(view)
    def wrapper(*args, name: str, **kwargs):
        missed = request.environ.get(ratelimit.MISSED_BENEATH)
        if missed is not None:  # counted and looked up beneath Flask
            g.ferry_missed = missed
            return view(*args, name=name, **kwargs)
        # A request with an `Idempotency-Key` goes to the view, which checks the key before
        # answering from the cache.
        if not request.is_json or "Idempotency-Key" in request.headers:
            ratelimit.settle()
            return view(*args, name=name, **kwargs)
        glanced = glance(services().registry, name, request.get_data(cache=True))
        if glanced is not None:
            spec, validated = glanced
            cache_key = services().cache.key(spec.name, spec.cache_version, validated)
            raw = lookup(spec, validated, cache_key)
            if raw is not None:
                fast_path.remember(name, request.get_data(cache=True), spec, validated, cache_key)
                return cache_hit(spec, raw)
            g.ferry_missed = (validated, cache_key)
        ratelimit.settle()
        return view(*args, name=name, **kwargs)

    return wrapper


def glance(registry, name: str, data: bytes) -> tuple[object, dict] | None:
    """The model version and validated input of a valid JSON submit body, or None (the
    request parser then says what is wrong with it)."""
    try:
        body = _SUBMIT.load(orjson.loads(data))
        spec = registry.get(name, body.get("version"))
        return spec, registry.input_schema(spec.name, spec.version).load(body["input"])
    except (orjson.JSONDecodeError, UnknownModel, ValidationError):
        return None


def lookup(spec, validated: dict, cache_key: str) -> str | None:
    """The cached output (encoded JSON) or None, in one round trip that also counts the
    request's rate limit when not yet counted; the input's popularity (for the nightly
    precompute) is counted in the process and written in batches."""
    ferry = services()
    raw = ratelimit.counted_get(ferry.redis, cache_key)
    ferry.popularity.add(ferry.redis, spec.name, spec.version, validated, cache_key)
    return raw


def cache_hit(spec, raw: str) -> Response:
    """The 200 of a cache hit."""
    fast_path.record_hit(services(), spec, request_ids.current(), g.get("metrics_started"))
    return Response(fast_path.hit_body(spec, raw), 200, mimetype="application/json")


def idempotency_key() -> str | None:
    """The request's `Idempotency-Key` header: 1 to 255 visible ASCII characters."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not (0 < len(key) <= 255 and all(33 <= ord(c) <= 126 for c in key)):
        abort(422, message="Idempotency-Key must be 1 to 255 visible ASCII characters.",
              errors={"headers": {"Idempotency-Key": ["1 to 255 visible ASCII characters."]}})
    return key


def _idempotency_mismatch(key: str):
    message = f"Idempotency-Key {key!r} was used with another body; send a new key for a new request."
    abort(422, message=message, errors={"headers": {"Idempotency-Key": [message]}})


# Where a queued prediction is followed (OpenAPI links: for clients, /docs and the fuzzer).
_FOLLOW = {
    "prediction": {"operationRef": "#/paths/~1predictions~1{prediction_id}/get",
                   "parameters": {"prediction_id": "$response.body#/id"}},
    "events": {"operationRef": "#/paths/~1predictions~1{prediction_id}~1events/get",
               "parameters": {"prediction_id": "$response.body#/id"}},
}


@blp.route("/models/<name>/predictions")
class Submissions(MethodView):
    @blp.requires(PREDICT)
    @known_model
    @cache_hits_first
    @blp.arguments(SubmitSchema)
    @blp.doc(responses={202: {"links": _FOLLOW}})
    @blp.response(202, PredictionSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(200, schema=PredictionSchema,
                      description="Answered from the cache, or finished within `Prefer: wait=N`.")
    @blp.alt_response(404, schema=ErrorSchema, description="No such model.")
    @blp.alt_response(422, schema=ErrorSchema, description="The input does not match the model's declaration.")
    @blp.alt_response(400, schema=ErrorSchema, description="The body is not valid JSON.")
    @blp.alt_response(413, schema=ErrorSchema, description="The body is larger than the configured limit.")
    @blp.alt_response(415, schema=ErrorSchema, description="The body is not sent as application/json.")
    @blp.alt_response(503, schema=ErrorSchema, description="Redis is unreachable; retry after `Retry-After` seconds.")
    @blp.doc(parameters=[{"in": "header", "name": "Prefer", "required": False, "schema": {"type": "string"},
                          "description": "`wait=N` (RFC 7240): wait up to N seconds for the result."}])
    def post(self, body: dict, name: str):
        """Submit a prediction. A cached input answers 200 at once; otherwise 202 and a Location to poll."""
        ferry = services()
        spec = spec_or_404(name, body.get("version"))
        owner = current_key().id
        key = idempotency_key()
        missed = g.get("ferry_missed")
        if missed is not None:  # validated and looked up by cache_hits_first
            validated, cache_key = missed
        else:
            try:
                validated = ferry.registry.input_schema(spec.name, spec.version).load(body["input"])
            except ValidationError as exc:
                abort(422, message=f"The input does not match model {name!r}.",
                      errors={"json": {"input": exc.messages}})
            cache_key = ferry.cache.key(spec.name, spec.cache_version, validated)
        # Same key, same body: the model, the version it runs (explicit or the default) and
        # the canonical input (defaults applied).
        digest = cache_key.rsplit(":", 1)[-1]
        fingerprint = f"{spec.name}:{spec.version}:{digest}"
        prior = None if key is None else ferry.store.idempotent(owner, key)
        if prior is not None:
            if prior[0] == f"{spec.name}:{digest}":  # as an older Ferry wrote it, without the version
                fingerprint = prior[0]
            elif prior[0] != fingerprint:
                _idempotency_mismatch(key)
            first = ferry.store.get(prior[1]) if prior[1] else None
            if first is not None:
                return _accepted(first, replayed=True)
        idempotency = None if key is None else (key, fingerprint)
        if missed is None:
            raw = lookup(spec, validated, cache_key)
            if raw is not None:
                if key is not None and prior is None:
                    ferry.store.remember_idempotent(owner, key, fingerprint)
                return cache_hit(spec, raw)
        metrics.CACHE_MISSES.labels(spec.name).inc()
        outcome, value, record, headers = queue_prediction(
            ferry, spec, validated, cache_key, owner=owner, request_id=request_ids.current(),
            wait_s=prefer_wait(ferry.settings.max_wait_s), script_root=request.script_root, idempotency=idempotency)
        if outcome == "created":
            return _answer(record, headers)
        if outcome == "mismatch":
            _idempotency_mismatch(key)
        if outcome == "full":
            abort(503, message=f"The {spec.queue!r} queue is full ({value} predictions waiting); retry later.",
                  headers={"Retry-After": str(ferry.settings.retry_after_s)})
        # Joined an identical prediction in flight, or replayed an Idempotency-Key.
        record = ferry.store.get(value)
        if record is None:  # it expired in the instant between
            abort(503, message="Try again.", headers={"Retry-After": "1"})
        return _accepted(record, replayed=outcome == "replay")


def location(script_root: str, prediction_id: str) -> str:
    """Where a prediction is read (PredictionById's route), as a path from the server's root."""
    return f"{script_root}/predictions/{prediction_id}"


def queue_prediction(ferry, spec, validated: dict, cache_key: str, *, owner: str, request_id: str, wait_s: float,
                     script_root: str = "", idempotency: tuple[str, str] | None = None):
    """Queue a prediction (its record and its Celery message in one step) and, with `wait_s`,
    wait for its end. Returns (outcome, value, record, headers) where, for "created", the
    record is as it stands after the wait and the headers are its Location (and the wait
    applied); the other outcomes are `PredictionStore.submit`'s, with no record."""
    prediction_id = records.new_prediction_id()
    # Built before a waiter's slot is taken: building it may fail (the broker away), and the
    # slot is given back only below.
    message = ferry.sender.message(prediction_id, spec)
    waiting = bool(wait_s) and ferry.waiters.acquire(blocking=False)
    try:
        # Wait before the prediction exists, so that its end cannot slip past unseen.
        with ferry.store.waiting(prediction_id) if waiting else contextlib.nullcontext() as watch:
            outcome, value, record = ferry.store.submit(
                model=spec.name, version=spec.version, queue=spec.queue, validated_input=validated,
                cache_key=cache_key, owner=owner, request_id=request_id, prediction_id=prediction_id,
                queue_pending=ferry.registry.pending_keys(ferry.store, spec.queue),
                limit=ferry.settings.queue_limit_for(spec.queue), idempotency=idempotency,
                revision=spec.revision, message=message, waiter=watch.channel if watch is not None else "")
            if outcome != "created":
                return outcome, value, None, {}
            logs.prediction_id.set(prediction_id)
            ferry.sender.pushed(prediction_id, spec)
            metrics.SUBMITTED.labels(spec.name).inc()
            log.info("prediction queued for %s %s on %s", spec.name, spec.version, spec.queue)
            headers = {"Location": location(script_root, prediction_id)}
            if watch is not None:
                record = _waited(watch, record, wait_s, headers)
            return outcome, value, record, headers
    finally:
        if waiting:
            ferry.waiters.release()


def _accepted(record: dict, replayed: bool = False):
    """202 and where to poll; 200 with the output when it is done (now, or within `Prefer: wait`)
    for a prediction that already existed (a shared or replayed one)."""
    ferry = services()
    headers = {"Location": location(request.script_root, record["id"])}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    wait_s = prefer_wait(ferry.settings.max_wait_s)
    if wait_s and record["status"] not in records.TERMINAL and ferry.waiters.acquire(blocking=False):
        try:
            with ferry.store.watching(record["id"]) as watch:
                # Read again once subscribed: it may have finished before the subscription.
                record = ferry.store.get(record["id"]) or record
                record = _waited(watch, record, wait_s, headers)
        except (redis.ConnectionError, redis.TimeoutError):
            pass  # the prediction is accepted and queued: answer 202, never 503, from here on
        finally:
            ferry.waiters.release()
    return _answer(record, headers)


def _waited(watch, record: dict, wait_s: float, headers: dict) -> dict:
    """The record once it is terminal, or as it stands after `Prefer: wait` runs out."""
    headers["Preference-Applied"] = f"wait={wait_s:g}"
    if record["status"] in records.TERMINAL:
        return record
    try:
        return watch.wait(wait_s) or record
    except (redis.ConnectionError, redis.TimeoutError):
        return record  # the prediction is accepted and queued: answer 202, never 503, from here on


def _answer(record: dict, headers: dict):
    return rendered(current_app, record), 200 if record["status"] in records.TERMINAL else 202, headers


@blp.route("/predictions/<prediction_id>")
class PredictionById(MethodView):
    @blp.requires(PREDICT)
    @blp.response(200, PredictionSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No prediction with this id (never issued, or expired).")
    def get(self, prediction_id: str):
        """A prediction's status, queue position or progress, output or error, and timings."""
        store = services().store
        record = owned_prediction(prediction_id)
        return rendered(current_app, record,
                        store.queue_position(record) if record["status"] == records.QUEUED else None)

    @blp.requires(PREDICT)
    @blp.response(204, description="Canceled: it was queued (or canceled already).")
    @blp.alt_response(202, schema=PredictionSchema, description=(
        "Running on a model declared `cancelable`: asked to stop; it becomes `canceled` at its next check."))
    @blp.alt_response(404, schema=ErrorSchema, description="No prediction with this id (never issued, or expired).")
    @blp.alt_response(409, schema=ErrorSchema, description=(
        "Finished already, or running on a model that cannot stop mid-run; `message` says which."))
    def delete(self, prediction_id: str):
        """Cancel a prediction: a queued one at once; a running one where its model allows it."""
        ferry = services()
        record = owned_prediction(prediction_id)
        try:
            cancelable = ferry.registry.get(record["model"], record["version"]).cancelable
        except UnknownModel:
            cancelable = False
        outcome = ferry.store.cancel(record, cancelable)
        if outcome in (records.CANCELED, "missing"):
            return None
        if outcome == "requested":
            response = rendered(current_app, ferry.store.get(prediction_id) or record)
            response.status_code = 202
            return response
        if outcome == "running":
            abort(409, message=f"Prediction {prediction_id} is running, and model {record['model']!r} cannot stop "
                               "mid-run (it does not declare `cancelable: true`); it will finish.")
        abort(409, message=f"Prediction {prediction_id} has already finished ({outcome}); there is nothing to cancel.")


def owned_prediction(prediction_id: str) -> dict:
    record = services().store.get(prediction_id) if records.is_prediction_id(prediction_id) else None
    return owned_or_404(record, f"No prediction with id {prediction_id!r}.")


_OUTPUT_NULL = re.compile(rb'"output": ?null')


def rendered(app, record: dict, queue_position: int | None = None) -> Response:
    """A record as the API answers it: PredictionSchema's fields as Flask writes JSON, with
    the stored output (JSON already) put in as it is stored, as a cache hit's is, not parsed
    and written again: for an embedding that would be most of the answer's CPU."""
    output = record.get("output")
    response = app.json.response(_shown({**record, "output": None} if output else record, queue_position))
    if output:
        # Keys are sorted: the top-level "output" comes before any nested one ("partial_output" is null when it ends).
        response.set_data(_OUTPUT_NULL.sub(lambda _: b'"output":' + output.encode(), response.get_data(), count=1))
    return response


def _shown(record: dict, queue_position: int | None) -> dict:
    return _PREDICTION.dump(view(record, queue_position))


def _event(kinds: list[str], data: dict) -> dict:
    return {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "enum": kinds},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}}}


# One server-sent event (before OpenAPI 3.2, `schema` of an event stream describes each event).
_EVENT_SCHEMA = {"oneOf": [
    _event(["status", "progress"], {"$ref": "#/components/schemas/Prediction"}),
    _event(["error"], {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}),
]}


@blp.route("/predictions/<prediction_id>/events")
class PredictionEventStream(MethodView):
    @blp.requires(PREDICT)
    @blp.doc(responses={"200": {"content": {"text/event-stream": {"schema": _EVENT_SCHEMA}}, "description": (
        "Server-sent events until the prediction is done: `event: status` when its status changed, "
        "`event: progress` when its queue position, progress or partial output did; `data` is the "
        "prediction as GET /predictions/{id} shows it. Lines starting with `:` are heartbeats.")}})
    @blp.alt_response(404, schema=ErrorSchema, description="No prediction with this id (never issued, or expired).")
    @blp.alt_response(503, schema=ErrorSchema,
                      description="Too many open streams on this server, or Redis is unreachable: poll instead.")
    def get(self, prediction_id: str):
        """Follow a prediction live: its status, queue position, progress and partial output."""
        ferry = services()
        record = owned_prediction(prediction_id)
        if not ferry.streams.acquire(blocking=False):
            abort(503, message="Too many event streams are open on this server; poll GET /predictions/{id}.",
                  headers={"Retry-After": str(ferry.settings.retry_after_s)})
        events = PredictionEvents(ferry.store, record, _shown, ferry.streams,
                                  ferry.settings.event_heartbeat_s, ferry.settings.event_stream_max_s)
        return events.response()
