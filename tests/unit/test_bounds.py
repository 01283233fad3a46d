"""Every input is bounded: per-field lengths from the declarations, and gunicorn's own refusals."""
import json
import socket

import pytest

from app.gunicorn_conf import write_json_error
from models.declaration import DEFAULT_MAX_LENGTH, parse_repository
from models.registry import Registry
from models.schemas import build_input_schema
from tasks.settings import Settings

SIZED = ("string", "image", "array")


def shipped_fields():
    registry = Registry.from_file(Settings().model_repository)
    return [(spec, field) for spec in registry.specs() for field in spec.inputs if field.type in SIZED]


@pytest.mark.parametrize("spec, field", shipped_fields(), ids=lambda value: getattr(value, "name", None))
def test_every_sized_input_of_the_shipped_models_has_a_maximum(client, spec, field):
    assert field.max_length is not None
    schema = client.get(f"/models/{spec.name}").json["input_schema"]["properties"][field.name]
    assert schema["maxItems" if field.type == "array" else "maxLength"] == field.max_length
    # The largest legitimate input fits in a body.
    assert field.max_length < Settings().max_content_length


def test_an_undeclared_maximum_gets_a_default_one():
    document = {"models": [{"name": "m", "kind": "torch", "version": "1", "entrypoint": "x:Y",
                            "inputs": {"s": {"type": "string"}, "a": {"type": "array", "items": "number"}}}]}
    spec = parse_repository(document)[0]
    assert [field.max_length for field in spec.inputs] == [DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH]
    errors = build_input_schema(spec).validate({"s": "x" * (DEFAULT_MAX_LENGTH + 1),
                                                "a": [0.0] * (DEFAULT_MAX_LENGTH + 1)})
    assert set(errors) == {"s", "a"}


def test_one_over_a_declared_maximum_is_422(client):
    response = client.post("/models/minilm/predictions", json={"input": {"text": "x" * 2001}})
    assert response.status_code == 422 and "text" in response.json["errors"]["json"]["input"]


def test_gunicorns_own_refusals_use_the_one_error_body():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        write_json_error(ours, 414, "URI Too Long", "Request Line is too large (8192 > 4094)")
        raw = theirs.recv(65536).decode()
    head, _, body = raw.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 414 URI Too Long\r\n") and "Content-Type: application/json" in head
    assert f"Content-Length: {len(body)}" in head
    assert json.loads(body) == {"code": 414, "status": "URI Too Long",
                                "message": "Request Line is too large (8192 > 4094)", "errors": {}}
