"""Marshmallow schemas of the API's request and response bodies."""
from __future__ import annotations

from flask_smorest.error_handler import ErrorSchema  # noqa: F401  (code, status, message, errors)
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from batch_jobs.runner import LIMITS
from models.declaration import ModelDeclarationSchema


class SubmitSchema(Schema):
    class Meta:
        unknown = RAISE

    input = fields.Dict(required=True, metadata={"description": "The model's declared input fields."})
    version = fields.String(validate=validate.Length(min=1, max=32), metadata={
        "description": "Pin one of the model's versions; without it, the model's default version serves."})


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
    queue_position = fields.Integer(allow_none=True, metadata={
        "description": "While queued: 1 when it is the next prediction of its model to run, 2 after that, ..."})
    progress = fields.Float(allow_none=True, metadata={
        "description": "0 to 1, for models that report their progress; 1 once succeeded."})
    partial_output = fields.Dict(allow_none=True, metadata={
        "description": "While running: the output so far, for models that report one."})
    output = fields.Dict(allow_none=True)
    error = fields.String(allow_none=True)
    timings = fields.Nested(TimingsSchema, allow_none=True)
    batch_size = fields.Integer(allow_none=True, metadata={"description": "Inputs in the forward pass it ran in."})


class ModelSchema(Schema):
    name = fields.String()
    kind = fields.String()
    version = fields.String()
    description = fields.String()
    queue = fields.String()
    cache_ttl_s = fields.Integer()
    timeout_s = fields.Float(metadata={"description": "Soft time limit: past it the prediction fails as timed out."})
    hard_timeout_s = fields.Float(metadata={"description": "Hard time limit: past it the worker process is killed."})
    retries = fields.Dict(metadata={"description": "Retries of transient errors: max, backoff_s, backoff_max_s."})
    cancelable = fields.Boolean(metadata={"description": "Whether a running prediction can be canceled."})
    batching = fields.Dict()
    input_schema = fields.Dict(metadata={"description": "JSON Schema of the `input` object."})
    metrics = fields.Dict(allow_none=True)
    training_args = fields.Dict(allow_none=True)
    links = fields.Dict()
    versions = fields.List(fields.String(), metadata={"description": "Every version served; `version` is the default."})
    source = fields.String(metadata={"enum": ["repository", "runtime"], "description": (
        "Declared in the operator's model repository file, or registered with POST /models.")})
    url = fields.String(metadata={"description": "http models: where each batch is POSTed."})
    loaded = fields.List(fields.Dict(), metadata={"description": (
        "GET /models/{name} only: the worker processes that have it loaded: worker, pid, version, device, "
        "since, last_used, memory_mb.")})


class ModelRegistrationSchema(ModelDeclarationSchema):
    """An http model's declaration, as in the model repository file, with `kind: http` and `url`."""

    @validates("kind")
    def _http_only(self, value, **kwargs):
        if value != "http":
            raise ValidationError("Only http models are registered through the API; torch and subprocess models "
                                  "are declared in the operator's model repository file.")

    @validates("artifacts")
    def _no_files(self, value, **kwargs):
        # It names files on the server, which GET /models would read out to anyone.
        if value is not None:
            raise ValidationError("artifacts is for models of the repository file only.")


class RemoveQuerySchema(Schema):
    version = fields.String(validate=validate.Length(min=1, max=32), metadata={
        "description": "Remove only this version (default: every version)."})


class LogQuerySchema(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))


class ModelLogSchema(Schema):
    prediction_id = fields.String(allow_none=True, metadata={"description": "None for answers from the cache."})
    request_id = fields.String(allow_none=True)
    time = fields.Float(metadata={"description": "When the request came, in seconds since the epoch."})
    version = fields.String()
    status = fields.String(metadata={"enum": ["succeeded", "failed", "canceled"]})
    cache_hit = fields.Boolean()
    durations_ms = fields.Dict(metadata={"description": "queue_ms, run_ms and total_ms, as far as known."})


class HealthSchema(Schema):
    status = fields.String()
    checks = fields.Dict()


class BatchJobCreateSchema(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(required=True)
    version = fields.String(metadata={"description": "A version the model serves; its default when left out."})
    source = fields.Dict(required=True, metadata={"description": (
        '{"type": "jsonl"|"csv", "path": "<relative to FERRY_BATCH_INPUT_DIR>"} or {"type": "popular", "top_n": N}')})
    chunk_size = fields.Integer(strict=True, validate=validate.Range(*LIMITS["chunk_size"]))
    batch_size = fields.Integer(strict=True, validate=validate.Range(*LIMITS["batch_size"]), metadata={
        "description": "Inputs per forward pass; for http and subprocess models, at most their max_batch_size."})
    cache_ttl_s = fields.Integer(strict=True, validate=validate.Range(*LIMITS["cache_ttl_s"]))


class BatchProgressSchema(Schema):
    total = fields.Integer(metadata={"description": "Rows read from the source."})
    valid = fields.Integer(metadata={"description": (
        "Rows not found invalid (so far: workers check the rows of each chunk as they run it).")})
    done = fields.Integer(metadata={"description": "Inputs whose output is in the cache."})
    failed = fields.Integer(metadata={"description": "Valid inputs the model failed on."})
    invalid = fields.Integer(metadata={"description": (
        "Rows that could not be read, or that the model's schema refused; grows as chunks run.")})
    chunks_total = fields.Integer()
    chunks_done = fields.Integer()
    remaining = fields.Integer(metadata={"description": (
        "Valid rows not computed yet: 0 once the job has succeeded; what a canceled job left.")})
    rate_per_s = fields.Float(allow_none=True, metadata={"description": "Rows checked or computed a second."})
    eta_s = fields.Float(allow_none=True)


class BatchJobSchema(Schema):
    id = fields.String()
    model = fields.String()
    version = fields.String()
    status = fields.String(metadata={"enum": ["queued", "planning", "running", "succeeded", "failed", "canceled"]})
    origin = fields.String()
    source = fields.Dict()
    options = fields.Dict()
    progress = fields.Nested(BatchProgressSchema)
    errors = fields.List(fields.Dict(), metadata={"description": "A sample of invalid rows and failed inputs."})
    error = fields.String(allow_none=True)
    created_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)

