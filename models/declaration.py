"""The model repository file: one YAML file that declares every model Ferry serves.

The declaration is validated when it is read, so a typo fails at start-up with the
field that is wrong, not at the first request.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

FIELD_TYPES = ("string", "integer", "number", "boolean", "array", "image")
ITEM_TYPES = ("string", "integer", "number")
# torch: a Python class run in the worker; http: a remote model server that Ferry forwards
# each batch to; subprocess: a long-lived child of the worker speaking JSON lines.
MODEL_KINDS = ("torch", "http", "subprocess")
# Inputs are bounded even when the declaration forgets to bound them.
DEFAULT_MAX_LENGTH = 10_000
DEFAULT_MAX_IMAGE_LENGTH = 1_500_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str
    required: bool = False
    default: object = None
    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    items: str | None = None
    description: str = ""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    version: str
    inputs: tuple[FieldSpec, ...]
    entrypoint: str = ""  # torch: module:Class
    url: str = ""  # http: where each batch is POSTed
    command: tuple[str, ...] = ()  # subprocess: argv, relative paths from the repository root
    # Of several versions of one model, the one a request without `version` gets.
    default: bool = False
    # Models registered at run time: this registration's id, so that a prediction queued for
    # a removed one never runs on another registered later under the same name and version.
    revision: str = ""
    one_of: tuple[tuple[str, ...], ...] = ()
    description: str = ""
    queue: str = "realtime-cpu"
    cache_ttl_s: int = 7 * 24 * 3600
    # Soft limit: the batch is interrupted and fails with "Timed out". Hard limit: the
    # process running it is killed (a model that ignores the soft one).
    timeout_s: float = 60.0
    hard_timeout_s: float = 90.0
    # Transient errors (models.base.TRANSIENT_ERRORS) are retried this often, waiting
    # retry_backoff_s, then twice that, and so on, at most retry_backoff_max_s.
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    max_batch_size: int = 1
    max_wait_ms: int = 0
    # float16 autocast on CUDA devices; CPU workers always run float32.
    half_precision: bool = False
    # The model calls `check_canceled()` (or `report_progress`) as it runs, so a running
    # prediction can be canceled; otherwise only queued ones can.
    cancelable: bool = False
    artifacts: str | None = None

    @property
    def cache_version(self) -> str:
        """The version as cache keys spell it: a runtime model's revision too, so that a late
        output of a removed registration never answers for a later one of the same version."""
        return f"{self.version}+{self.revision}" if self.revision else self.version

    def metadata(self, root: Path) -> dict:
        """Metrics and training arguments shipped beside the model's weights, if any."""
        found: dict = {}
        if self.artifacts:
            for key, filename in (("metrics", "metrics.json"), ("training_args", "train_args.json")):
                path = root / self.artifacts / filename
                try:
                    if path.is_file():
                        found[key] = json.loads(path.read_text())
                except (OSError, ValueError) as exc:  # a broken file must not break GET /models
                    found[key] = {"error": f"{path.name} unreadable: {type(exc).__name__}"}
        return found


class _FieldDecl(Schema):
    type = fields.String(required=True, validate=validate.OneOf(FIELD_TYPES))
    required = fields.Boolean(load_default=False)
    default = fields.Raw(load_default=None, allow_none=True)
    min = fields.Float(load_default=None)
    max = fields.Float(load_default=None)
    min_length = fields.Integer(load_default=None, validate=validate.Range(min=0))
    max_length = fields.Integer(load_default=None, validate=validate.Range(min=1))
    # `length` is shorthand for min_length == max_length.
    length = fields.Integer(load_default=None, validate=validate.Range(min=1))
    items = fields.String(load_default=None, validate=validate.OneOf(ITEM_TYPES))
    description = fields.String(load_default="")

    @validates_schema
    def _check(self, data, **kwargs):
        if data["type"] == "array" and not data.get("items"):
            raise ValidationError("An array field needs `items` (one of %s)." % ", ".join(ITEM_TYPES), "items")
        if data["required"] and data.get("default") is not None:
            raise ValidationError("A required field cannot have a default.", "default")
        for low, high in (("min", "max"), ("min_length", "max_length")):
            if data.get(low) is not None and data.get(high) is not None and data[low] > data[high]:
                raise ValidationError(f"{low} ({data[low]:g}) is greater than {high} ({data[high]:g}): no input "
                                      "would be accepted.", high)
        if data.get("default") is not None:
            # The default stands for an input left out: it must be one the field would accept.
            from models.schemas import build_field

            try:
                build_field(_field_spec("default", dict(data))).deserialize(data["default"])
            except ValidationError as exc:
                messages = exc.messages if isinstance(exc.messages, list) else [str(exc.messages)]
                raise ValidationError(f"The default is not a valid value of the field: {' '.join(messages)}",
                                      "default") from None


class _BatchingDecl(Schema):
    max_batch_size = fields.Integer(load_default=1, validate=validate.Range(min=1, max=4096))
    max_wait_ms = fields.Integer(load_default=0, validate=validate.Range(min=0, max=10_000))


class _RetriesDecl(Schema):
    max = fields.Integer(load_default=3, validate=validate.Range(min=0, max=10))
    backoff_s = fields.Float(load_default=1.0, validate=validate.Range(min=0.0, max=60.0))
    # Well below the visibility timeout: a retry waits in the broker as a delayed message.
    backoff_max_s = fields.Float(load_default=30.0, validate=validate.Range(min=0.0, max=120.0))


class ModelDeclarationSchema(Schema):
    name = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z0-9][a-z0-9_-]{0,63}$", error="Up to 64 lowercase letters, digits, '-' and '_', starting with a "
                                             "letter or digit."))
    kind = fields.String(required=True, validate=validate.OneOf(MODEL_KINDS))
    version = fields.String(required=True, validate=validate.Regexp(
        r"^[A-Za-z0-9._-]{1,32}$", error="1 to 32 letters, digits, '.', '-' and '_'."))
    entrypoint = fields.String(load_default="", validate=validate.Regexp(
        r"^[\w.]+:\w+$", error="module:Class, such as models.builtin.digits:DigitsModel."))
    url = fields.Url(load_default="", schemes={"http", "https"}, require_tld=False)
    command = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    default = fields.Boolean(load_default=False)
    description = fields.String(load_default="")
    queue = fields.String(load_default="realtime-cpu")
    cache_ttl_s = fields.Integer(load_default=7 * 24 * 3600, validate=validate.Range(min=0))
    timeout_s = fields.Float(load_default=60.0, validate=validate.Range(min=0.1))
    # Default: timeout_s + 30.
    hard_timeout_s = fields.Float(load_default=None, validate=validate.Range(min=0.1))
    retries = fields.Nested(_RetriesDecl, load_default=lambda: _RetriesDecl().load({}))
    cancelable = fields.Boolean(load_default=False)
    batching = fields.Nested(_BatchingDecl, load_default=lambda: {"max_batch_size": 1, "max_wait_ms": 0})
    half_precision = fields.Boolean(load_default=False)
    artifacts = fields.String(load_default=None)
    inputs = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z_][a-z0-9_]*$")),
                         values=fields.Nested(_FieldDecl), required=True,
                         validate=validate.Length(min=1))
    one_of = fields.List(fields.List(fields.String(), validate=validate.Length(min=2)), load_default=list)

    @validates_schema
    def _check(self, data, **kwargs):
        needs = {"torch": "entrypoint", "http": "url", "subprocess": "command"}
        kind = data.get("kind")
        for field_name in needs.values():
            if kind in needs and data.get(field_name) and field_name != needs[kind]:
                raise ValidationError(f"A {kind} model has no {field_name}.", field_name)
        if kind in needs and not data.get(needs[kind]):
            raise ValidationError(f"A {kind} model needs {needs[kind]}.", needs[kind])
        hard = data.get("hard_timeout_s")
        if hard is not None and hard <= data.get("timeout_s", 60.0):
            raise ValidationError("hard_timeout_s must be longer than timeout_s (the soft limit).", "hard_timeout_s")
        for group in data.get("one_of", []):
            unknown = [name for name in group if name not in data["inputs"]]
            if unknown:
                raise ValidationError(f"one_of names undeclared inputs: {unknown}", "one_of")


class _RepositoryDecl(Schema):
    models = fields.List(fields.Nested(ModelDeclarationSchema), required=True)


def _field_spec(name: str, decl: dict) -> FieldSpec:
    length = decl.pop("length")
    if length is not None:
        decl["min_length"] = decl["max_length"] = length
    if "integer" in (decl["type"], decl["items"]):
        # Beyond 64 bits no JSON encoder downstream (orjson, the cache key's) takes the number.
        decl["min"] = INT64_MIN if decl["min"] is None else max(decl["min"], INT64_MIN)
        decl["max"] = INT64_MAX if decl["max"] is None else min(decl["max"], INT64_MAX)
    if decl["max_length"] is None and decl["type"] in ("string", "array", "image"):
        decl["max_length"] = DEFAULT_MAX_IMAGE_LENGTH if decl["type"] == "image" else DEFAULT_MAX_LENGTH
    return FieldSpec(name=name, **decl)


def parse_repository(document: dict, source: str = "model repository") -> list[ModelSpec]:
    try:
        loaded = _RepositoryDecl().load(document)
    except ValidationError as exc:
        messages = exc.messages
        models = document.get("models") if isinstance(document, dict) else None
        if isinstance(messages, dict) and isinstance(messages.get("models"), dict) and isinstance(models, list):
            # By name, not by place in the list: "models: {0: ...}" sends the reader counting.
            named = {}
            for i, errors in messages["models"].items():
                name = models[i].get("name") if isinstance(i, int) and i < len(models) and isinstance(models[i], dict) \
                    else None
                named[name if isinstance(name, str) and name not in named else i] = errors
            messages = {**messages, "models": named}
        raise ValueError(f"{source} is invalid: {messages}") from None
    specs = []
    for decl in loaded["models"]:
        batching = decl.pop("batching")
        retries = decl.pop("retries")
        decl["hard_timeout_s"] = decl["hard_timeout_s"] or decl["timeout_s"] + 30
        decl.update(max_retries=retries["max"], retry_backoff_s=retries["backoff_s"],
                    retry_backoff_max_s=retries["backoff_max_s"])
        inputs = tuple(_field_spec(name, dict(field)) for name, field in decl.pop("inputs").items())
        one_of = tuple(tuple(group) for group in decl.pop("one_of"))
        command = tuple(decl.pop("command"))
        specs.append(ModelSpec(inputs=inputs, one_of=one_of, command=command, **batching, **decl))
    check_versions(specs, source)
    return specs


def check_versions(specs: list[ModelSpec], source: str) -> None:
    """Each (name, version) once; a model with several versions marks exactly one `default`."""
    by_name: dict[str, list[ModelSpec]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec)
    for name, versions in by_name.items():
        numbers = [spec.version for spec in versions]
        twice = sorted({number for number in numbers if numbers.count(number) > 1})
        if twice:
            raise ValueError(f"{source} declares model {name!r} version {', '.join(twice)} twice.")
        defaults = [spec.version for spec in versions if spec.default]
        if len(versions) > 1 and len(defaults) != 1:
            raise ValueError(f"{source} declares {len(versions)} versions of model {name!r} and "
                             f"{len(defaults) or 'none'} marked `default: true`; mark exactly one.")


def default_versions(specs: list[ModelSpec]) -> dict[str, str]:
    """The version each model name serves when a request does not pin one."""
    chosen: dict[str, str] = {}
    for spec in specs:
        if spec.default or spec.name not in chosen:
            chosen[spec.name] = spec.version
    return chosen


def load_repository(path: str | Path) -> list[ModelSpec]:
    path = Path(path)
    with path.open() as handle:
        document = yaml.safe_load(handle)
    return parse_repository(document or {}, source=str(path))
