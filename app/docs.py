"""The OpenAPI document's model-specific parts, and Swagger UI served from the
swagger-ui-bundle package, so /docs works offline."""
from __future__ import annotations

import copy

from flask import Blueprint, send_from_directory
from swagger_ui_bundle import swagger_ui_path
from werkzeug.routing import Rule

from models.schemas import input_json_schema

STATIC_URL = "/docs/static/"
SUBMIT_PATH = "/models/{name}/predictions"

blp = Blueprint("swagger_ui_static", __name__)


@blp.route(STATIC_URL + "<path:filename>")
def static_file(filename: str):
    return send_from_directory(str(swagger_ui_path), filename, max_age=86400)


def _component(name: str) -> str:
    return "".join(part.title() for part in name.replace("-", "_").split("_"))


def document_models(api, registry, settings) -> None:
    """Write what each model accepts into the OpenAPI document: one submit operation per
    model with its declared input as the body (so /docs has a form per model, and clients
    and the fuzzer see exactly what is valid), and the model names and source shapes a
    batch job takes, for the models of the repository file. The generic
    `/models/{name}/predictions` serves models registered at run time too, whose input
    `GET /models/{name}` describes."""
    spec = api.spec
    generated = spec.to_dict()
    generic = generated["paths"][SUBMIT_PATH]["post"]
    submit = generated["components"]["schemas"]["Submit"]
    file_names = sorted({spec.name for spec in registry.file_specs})
    for model in (registry.get(model_name) for model_name in file_names):
        name = _component(model.name)
        spec.components.schema(f"{name}Input", input_json_schema(model))
        spec.components.schema(f"{name}Submit", {
            **submit, "properties": {**submit["properties"], "input": {"$ref": f"#/components/schemas/{name}Input"}}})
        operation = copy.deepcopy(generic)
        operation["summary"] = f"Submit a prediction to {model.name}. {model.description}".strip()
        operation["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{name}Submit"}
        spec.path(rule=Rule(SUBMIT_PATH.replace("{name}", model.name)), operations={"post": operation})

    batch = spec.components.schemas["BatchJobCreate"]["properties"]
    batch["model"]["enum"] = file_names
    batch["source"]["oneOf"] = [
        {"type": "object", "required": ["type", "path"], "properties": {
            "type": {"type": "string", "enum": ["jsonl", "csv"]},
            "path": {"type": "string", "description": "Relative to FERRY_BATCH_INPUT_DIR."}}},
        {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "enum": ["popular"]},
            "top_n": {"type": "integer", "minimum": 1, "maximum": settings.popular_max}}},
    ]


def init_app(app) -> None:
    app.register_blueprint(blp)
