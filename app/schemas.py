"""Marshmallow schemas of the API's request and response bodies."""
from __future__ import annotations

from marshmallow import RAISE, Schema, fields


class SubmitSchema(Schema):
    class Meta:
        unknown = RAISE

    input = fields.Dict(required=True, metadata={"description": "The model's declared input fields."})


class TimingsSchema(Schema):
    queued_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    queue_ms = fields.Float(allow_none=True, metadata={"description": "Time spent waiting for a worker."})
    run_ms = fields.Float(allow_none=True, metadata={"description": "Time spent on the worker."})


class PredictionSchema(Schema):
    id = fields.String(allow_none=True, metadata={"description": "Absent for answers served from the cache."})
    model = fields.String()
    version = fields.String()
    status = fields.String(metadata={"enum": ["queued", "running", "succeeded", "failed", "canceled"]})
    cached = fields.Boolean()
    output = fields.Dict(allow_none=True)
    error = fields.String(allow_none=True)
    timings = fields.Nested(TimingsSchema, allow_none=True)


class ModelSchema(Schema):
    name = fields.String()
    kind = fields.String()
    version = fields.String()
    description = fields.String()
    queue = fields.String()
    cache_ttl_s = fields.Integer()
    timeout_s = fields.Float()
    batching = fields.Dict()
    input_schema = fields.Dict(metadata={"description": "JSON Schema of the `input` object."})
    metrics = fields.Dict(allow_none=True)
    training_args = fields.Dict(allow_none=True)
    links = fields.Dict()


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict()
