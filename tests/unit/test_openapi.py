"""The OpenAPI document says what each model accepts, and what the fuzzer found is fixed."""
from __future__ import annotations

import schemathesis

from models.schemas import input_json_schema
from tasks import records

PIXELS = [0.0] * 64


def test_each_model_has_its_own_submit_operation_with_its_input(app, client):
    spec = client.get("/openapi.json").json
    registry = app.extensions["ferry"].registry
    for name in registry.names():
        operation = spec["paths"][f"/models/{name}/predictions"]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        input_ref = spec["components"]["schemas"][body]["properties"]["input"]["$ref"].rsplit("/", 1)[1]
        assert spec["components"]["schemas"][input_ref] == input_json_schema(registry.get(name))
        assert operation["security"] == [{"apiKey": []}]
    assert "/models/{name}/predictions" in spec["paths"]  # for models added after start


def test_a_batch_job_documents_its_models_and_sources(app, client):
    """Found by fuzzing: any string was documented as a model, and any object as a source."""
    properties = client.get("/openapi.json").json["components"]["schemas"]["BatchJobCreate"]["properties"]
    assert properties["model"]["enum"] == app.extensions["ferry"].registry.names()
    assert [option["properties"]["type"]["enum"] for option in properties["source"]["oneOf"]] == [
        ["jsonl", "csv"], ["popular"]]


def test_no_schema_has_an_empty_required_list(client):
    """OpenAPI 3.0 forbids `required: []`; a model whose inputs are all optional had one."""
    def walk(node):
        if isinstance(node, dict):
            assert node.get("required", True) != [], node
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(client.get("/openapi.json").json)


def test_a_queued_prediction_links_to_where_it_is_followed(client):
    links = client.get("/openapi.json").json["paths"]["/models/digits/predictions"]["post"]["responses"]["202"]["links"]
    assert {link["operationRef"] for link in links.values()} == {
        "#/paths/~1predictions~1{prediction_id}/get", "#/paths/~1predictions~1{prediction_id}~1events/get"}


def test_the_event_stream_matches_its_documented_events(app, client):
    """Found by fuzzing: the stream was documented as one string, not as events whose `data`
    is the prediction (or an error)."""
    location = client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}}).headers["Location"]
    prediction_id = location.rsplit("/", 1)[1]
    app.extensions["ferry"].store.update(prediction_id, records.SUCCEEDED, output='{"label": 0}', finished_at="2.0")
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operation = schema["/predictions/{prediction_id}/events"]["GET"]
    case = operation.Case(path_parameters={"prediction_id": prediction_id})
    # Raises on any event that breaks the document.
    response = case.call_and_validate(headers={"Authorization": client.environ_base["HTTP_AUTHORIZATION"]})
    assert response.status_code == 200 and "event: status" in response.text
