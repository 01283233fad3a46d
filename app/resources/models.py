"""/models: what Ferry serves and how to call it; registering and removing http models at
run time (admin); where each model is loaded; each model's recent requests."""
from __future__ import annotations

import logging

from flask import request, url_for
from flask.views import MethodView
from flask_smorest import abort
from app.keys import ADMIN
from app.parsing import Blueprint
from app.schemas import (ErrorSchema, LogQuerySchema, ModelLogSchema, ModelRegistrationSchema, ModelSchema,
                         RemoveQuerySchema)
from app.services import services
from models.declaration import ModelSpec
from models.registry import UnknownModel, UnknownVersion
from models.runtime import RegistrationError, allowed_hosts, check_serving, check_url
from models.schemas import input_json_schema
from tasks.celery_app import BATCH_QUEUE
from tasks.devices import SWEEP_QUEUE, is_device_queue
from tasks.heartbeat import live_queues
from tasks.pool import loaded_key, where_loaded

log = logging.getLogger(__name__)
blp = Blueprint("models", __name__, url_prefix="/models", description="The models Ferry serves.")


def describe(spec: ModelSpec, versions: list[ModelSpec] | None = None, loaded: list[dict] | None = None) -> dict:
    ferry = services()
    described = {
        "name": spec.name,
        "kind": spec.kind,
        "version": spec.version,
        "versions": [other.version for other in versions or [spec]],
        "source": "repository" if ferry.registry.is_file_model(spec.name) else "runtime",
        "description": spec.description,
        "queue": spec.queue,
        "cache_ttl_s": spec.cache_ttl_s,
        "timeout_s": spec.timeout_s,
        "hard_timeout_s": spec.hard_timeout_s,
        "cancelable": spec.cancelable,
        "retries": {"max": spec.max_retries, "backoff_s": spec.retry_backoff_s,
                    "backoff_max_s": spec.retry_backoff_max_s},
        "batching": {"max_batch_size": spec.max_batch_size, "max_wait_ms": spec.max_wait_ms},
        "input_schema": input_json_schema(spec),
        **ferry.registry.metadata(spec),
        "links": {"predictions": f"/models/{spec.name}/predictions", "logs": f"/models/{spec.name}/logs"},
    }
    if loaded is not None:
        described["loaded"] = loaded
    return described


def spec_or_404(name: str, version: str | None = None) -> ModelSpec:
    try:
        return services().registry.get(name, version)
    except UnknownVersion:
        versions = ", ".join(spec.version for spec in services().registry.versions(name))
        abort(404, message=f"Model {name!r} has no version {version!r}; it serves {versions}.")
    except UnknownModel:
        abort(404, message=f"No model named {name!r}. GET /models lists the models served.")


def _routable(ferry):
    """Whether a queue is a real-time one: a device's, a repository model's, or one that a
    running worker consumes; never the batch queue nor the sweeper's."""
    known = {*(spec.queue for spec in ferry.registry.file_specs),
             *live_queues(ferry.redis, ferry.settings.key_prefix, 2 * ferry.settings.heartbeat_s)}
    return lambda queue: queue not in (BATCH_QUEUE, SWEEP_QUEUE) and (is_device_queue(queue) or queue in known)


def _loaded(name: str) -> list[dict]:
    ferry = services()
    # Three missed reports: that process is gone.
    return where_loaded(ferry.redis, ferry.settings.key_prefix, name, 3 * ferry.settings.heartbeat_s)


@blp.route("")
class Models(MethodView):
    @blp.response(200, ModelSchema(many=True))
    def get(self):
        """List the models served (each at its default version)."""
        registry = services().registry
        return [describe(registry.get(name), registry.versions(name)) for name in registry.names()]

    @blp.requires(ADMIN)
    @blp.arguments(ModelRegistrationSchema)
    @blp.response(201, ModelSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(403, schema=ErrorSchema, description="Registration is off, or the URL's host is not allowed.")
    @blp.alt_response(409, schema=ErrorSchema, description="That name and version exist already.")
    @blp.alt_response(422, schema=ErrorSchema, description="The declaration is invalid.")
    def post(self, declaration: dict):  # noqa: ARG002 (validated by the schema; the raw body is stored)
        """Register an http model (or a new version of one) at run time.

        Every API process and worker serves it at once, without a restart. Its `url` must name a
        host the operator allows (`FERRY_HTTP_MODEL_HOSTS`). Torch and subprocess models are
        declared only in the operator's model repository file."""
        ferry = services()
        try:
            # Kept as sent (the schema has checked it), so that every process parses the same text.
            raw = request.get_json()
            check_url(declaration["url"], allowed_hosts(ferry.settings.http_model_hosts))
            check_serving(raw, _routable(ferry), ferry.settings.visibility_timeout_s)
            spec = ferry.runtime.register(raw, reserved={spec.name for spec in ferry.registry.file_specs})
        except RegistrationError as exc:
            abort(exc.status, message=str(exc), errors={"json": {exc.field: [str(exc)]}})
        except ValueError as exc:
            abort(422, message=str(exc))
        ferry.registry.sync(force=True)
        log.info("registered http model %s %s at %s", spec.name, spec.version, spec.url)
        registry = ferry.registry
        shown = describe(registry.get(spec.name, spec.version), registry.versions(spec.name))
        return shown, 201, {"Location": url_for("models.ModelByName", name=spec.name)}


@blp.route("/<name>")
class ModelByName(MethodView):
    @blp.response(200, ModelSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such model.")
    def get(self, name: str):
        """Describe one model: versions, input schema, metrics, training arguments, and where it is loaded."""
        spec = spec_or_404(name)
        return describe(spec, services().registry.versions(name), _loaded(name))

    @blp.requires(ADMIN)
    @blp.arguments(RemoveQuerySchema, location="query")
    @blp.response(204, description="Removed; its queued predictions failed with the reason.")
    @blp.alt_response(404, schema=ErrorSchema, description="No such model (or version).")
    @blp.alt_response(409, schema=ErrorSchema, description="Declared in the model repository file.")
    def delete(self, query: dict, name: str):
        """Remove a model registered at run time (every version, or `?version=`). Predictions still
        queued for it fail with a clear error; its cached outputs are dropped."""
        ferry = services()
        spec_or_404(name, query.get("version"))
        if ferry.registry.is_file_model(name):
            abort(409, message=f"Model {name!r} is declared in the model repository file; the operator removes it "
                               "there.")
        removed = ferry.runtime.remove(name, query.get("version"))
        ferry.registry.sync(force=True)
        for entry in removed:
            version, revision = entry["declaration"]["version"], entry["revision"]
            failed = ferry.store.fail_queued(name, version, revision, f"Model {name!r} version {version!r} was "
                                                                      "removed before this prediction ran.")
            dropped = ferry.cache.drop(name, f"{version}+{revision}")
            log.info("removed model %s %s: %d queued predictions failed, %d cached outputs dropped",
                     name, version, len(failed), dropped)
        if not ferry.runtime.has(name):
            ferry.request_log.clear(name)
            ferry.redis.delete(loaded_key(ferry.settings.key_prefix, name))


@blp.route("/<name>/logs")
class ModelLogs(MethodView):
    @blp.requires(ADMIN)
    @blp.arguments(LogQuerySchema, location="query")
    @blp.response(200, ModelLogSchema(many=True))
    @blp.alt_response(404, schema=ErrorSchema, description="No such model.")
    def get(self, query: dict, name: str):
        """The model's recent requests, newest first: ids, time, status, durations, cache hit.

        A request shows once it is answered: at once when the cache answers it, when its
        prediction finishes otherwise."""
        spec_or_404(name)
        return services().request_log.recent(name, query["limit"])

    @blp.requires(ADMIN)
    @blp.response(204, description="Cleared.")
    @blp.alt_response(404, schema=ErrorSchema, description="No such model.")
    def delete(self, name: str):
        """Clear the model's request log."""
        spec_or_404(name)
        services().request_log.clear(name)
