"""GET /models and /models/{name}: what Ferry serves and how to call it."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import abort

from app.parsing import Blueprint
from app.schemas import ErrorSchema, ModelSchema
from app.services import services
from models.declaration import ModelSpec
from models.registry import UnknownModel
from models.schemas import input_json_schema

blp = Blueprint("models", __name__, url_prefix="/models", description="The models Ferry serves.")


def describe(spec: ModelSpec) -> dict:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "version": spec.version,
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
        **services().registry.metadata(spec.name),
        "links": {"predictions": f"/models/{spec.name}/predictions"},
    }


def spec_or_404(name: str) -> ModelSpec:
    try:
        return services().registry.get(name)
    except UnknownModel:
        abort(404, message=f"No model named {name!r}. GET /models lists the models served.")


@blp.route("")
class Models(MethodView):
    @blp.response(200, ModelSchema(many=True))
    def get(self):
        """List the models served."""
        return [describe(spec) for spec in services().registry.specs()]


@blp.route("/<name>")
class ModelByName(MethodView):
    @blp.response(200, ModelSchema)
    @blp.alt_response(404, schema=ErrorSchema, description="No such model.")
    def get(self, name: str):
        """Describe one model: version, input schema, metrics and training arguments."""
        return describe(spec_or_404(name))
