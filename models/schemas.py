"""Input validation built from a model's declaration: a marshmallow schema and a JSON Schema."""
from __future__ import annotations

import math

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from models.declaration import FieldSpec, ModelSpec
from models.images import ImageError, check_image


class ImageField(fields.String):
    """A base64 PNG or JPEG (or a data URL of one), loaded as its canonical plain base64."""

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return check_image(text)
        except ImageError as exc:
            raise ValidationError(str(exc)) from None


def _valid_unicode(value: str) -> None:
    # JSON can carry lone surrogates ("\ud800"), which no UTF-8 encoder accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Invalid Unicode: the text holds a lone surrogate.") from None


def _range(spec: FieldSpec) -> list:
    if spec.min is None and spec.max is None:
        return []
    return [validate.Range(min=spec.min, max=spec.max)]


class StrictFloat(fields.Float):
    """A JSON number only: marshmallow's Float would also take "3.5" and true."""

    def _validated(self, value):
        if isinstance(value, (str, bool)):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    """JSON true or false only: marshmallow's Boolean would also take "yes" and 1."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def _scalar(kind: str, validators: list) -> fields.Field:
    if kind == "string":
        return fields.String(validate=[_valid_unicode, *validators])
    if kind == "integer":
        return fields.Integer(strict=True, validate=validators)
    return StrictFloat(allow_nan=False, validate=validators)


class NumberArray(fields.Field):
    """A list of numbers, checked in one pass over C-level builtins.

    `List(Float(validate=Range))` costs about a microsecond an item, which dominates batch
    precompute of small models; this field accepts and rejects the same values (numbers
    only, finite, in range, integers strictly) with the same per-index messages.
    """

    def __init__(self, *, integer: bool, minimum, maximum, min_length, max_length, **kwargs):
        super().__init__(validate=validate.Length(min=min_length, max=max_length), **kwargs)
        self.integer = integer
        self.minimum = -math.inf if minimum is None else minimum
        self.maximum = math.inf if maximum is None else maximum
        self.allowed = (int,) if integer else (int, float)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
        allowed = self.allowed
        if (all(type(item) in allowed for item in value) and all(map(math.isfinite, value))
                and (not value or (self.minimum <= min(value) and max(value) <= self.maximum))):
            return value if self.integer else list(map(float, value))
        raise ValidationError(self._item_errors(value))

    def _item_errors(self, value: list) -> dict:
        errors = {}
        for index, item in enumerate(value):
            if type(item) not in self.allowed:
                errors[index] = ["Not a valid integer." if self.integer else "Not a valid number."]
            elif not math.isfinite(item):
                errors[index] = ["Special numeric values (nan or infinity) are not permitted."]
            elif not self.minimum <= item <= self.maximum:
                errors[index] = [f"Must be greater than or equal to {self.minimum} and less than or equal to "
                                 f"{self.maximum}."]
        return errors


def _length(spec: FieldSpec) -> list:
    return [validate.Length(min=spec.min_length, max=spec.max_length)]


def build_field(spec: FieldSpec) -> fields.Field:
    if spec.type == "boolean":
        field = StrictBoolean()
    elif spec.type == "image":
        field = ImageField(validate=_length(spec))
    elif spec.type == "array" and spec.items in ("number", "integer"):
        field = NumberArray(integer=spec.items == "integer", minimum=spec.min, maximum=spec.max,
                            min_length=spec.min_length, max_length=spec.max_length)
    elif spec.type == "array":
        field = fields.List(_scalar(spec.items, []), validate=_length(spec))
    elif spec.type == "string":
        field = _scalar("string", _length(spec))
    else:
        field = _scalar(spec.type, _range(spec))
    field.required = spec.required
    if spec.default is not None:
        field.load_default = spec.default
    return field


def build_input_schema(spec: ModelSpec) -> Schema:
    """A schema instance that loads `input` into the canonical, defaults-applied form."""
    attrs: dict = {name: build_field(field) for name, field in ((f.name, f) for f in spec.inputs)}
    one_of = spec.one_of

    @validates_schema
    def _exactly_one(self, data, **kwargs):
        for group in one_of:
            given = [name for name in group if data.get(name) is not None]
            if len(given) != 1:
                message = f"Give exactly one of: {', '.join(group)}."
                raise ValidationError({name: [message] for name in group})

    attrs["_exactly_one"] = _exactly_one
    attrs["Meta"] = type("Meta", (), {"unknown": RAISE})
    schema_class = type(f"{spec.name.title().replace('-', '').replace('_', '')}InputSchema", (Schema,), attrs)
    return schema_class()


_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean", "image": "string"}


def input_json_schema(spec: ModelSpec) -> dict:
    """The declaration as JSON Schema, for clients and generated forms."""
    properties = {}
    for field in spec.inputs:
        if field.type == "array":
            prop: dict = {"type": "array", "items": {"type": field.items}}
            _bounds(prop["items"], field)
            prop.update(_none_dropped(minItems=field.min_length, maxItems=field.max_length))
        else:
            prop = {"type": _JSON_TYPES[field.type]}
            if field.type == "image":
                prop.update(contentEncoding="base64", description="A base64 PNG or JPEG (a data URL is accepted).")
            if field.type in ("string", "image"):
                prop.update(_none_dropped(minLength=field.min_length, maxLength=field.max_length))
            _bounds(prop, field)
        if field.default is not None:
            prop["default"] = field.default
        if field.description:
            prop["description"] = field.description
        properties[field.name] = prop
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [field.name for field in spec.inputs if field.required]
    if required:  # OpenAPI 3.0 (JSON Schema draft 4) allows no empty `required`
        schema["required"] = required
    if spec.one_of:
        schema["oneOf"] = [{"required": [name]} for group in spec.one_of for name in group]
    return schema


def _bounds(target: dict, field: FieldSpec) -> None:
    if field.type in ("integer", "number") or field.items in ("integer", "number"):
        target.update(_none_dropped(minimum=field.min, maximum=field.max))


def _none_dropped(**values) -> dict:
    return {key: value for key, value in values.items() if value is not None}
