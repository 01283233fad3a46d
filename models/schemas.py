"""Input validation built from a model's declaration: a marshmallow schema and a JSON Schema."""
from __future__ import annotations

import math

from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate, validates_schema

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


# "Not decided here": the caller lets marshmallow decide, and word its messages.
SLOW = object()
_ABSENT = object()
_FLOATS = {float}


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
        self._allowed_set = frozenset(self.allowed)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, list):
            raise ValidationError("Not a valid list.")
        loaded = self.load_valid(value)
        if loaded is SLOW:
            errors = self._item_errors(value)
            if errors:
                raise ValidationError(errors)
            # Only unsure (finite values whose sum overflows): item by item, all are fine.
            loaded = value if self.integer else list(map(float, value))
        return loaded

    def load_valid(self, value: list):
        """The loaded list when every item is acceptable, else SLOW. Each check is one pass
        in C (`set(map(type, ...))`, `sum`, `min`, `max`): a few microseconds for 64 items,
        where a generator expression over them costs several times that."""
        types = set(map(type, value))
        if not self._allowed_set.issuperset(types):
            return SLOW
        if not value:
            return []
        if not self.integer:
            # A NaN or an infinity makes the sum non-finite; so does overflow, rarely, and
            # then the item-by-item check decides.
            try:
                if not math.isfinite(sum(value)):
                    return SLOW
            except OverflowError:  # an int too large for a float (stdlib json makes them)
                return SLOW
        if not (self.minimum <= min(value) and max(value) <= self.maximum):
            return SLOW
        if self.integer or types == _FLOATS:
            return value
        try:
            return list(map(float, value))
        except OverflowError:  # huge ints that cancel out in the sum: item by item decides
            return SLOW

    def _item_errors(self, value: list) -> dict:
        errors = {}
        for index, item in enumerate(value):
            if type(item) not in self.allowed:
                errors[index] = ["Not a valid integer." if self.integer else "Not a valid number."]
            elif not self.integer and not _finite(item):
                errors[index] = ["Special numeric values (nan or infinity) are not permitted."]
            elif not self.minimum <= item <= self.maximum:
                errors[index] = [f"Must be greater than or equal to {self.minimum} and less than or equal to "
                                 f"{self.maximum}."]
        return errors


def _finite(item) -> bool:
    try:
        return math.isfinite(item)
    except OverflowError:
        return False


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


class InputSchema(Schema):
    """A model's input schema, plus `load_fast` for batch jobs, which load thousands of rows a
    second: marshmallow's own machinery costs about 20 µs a row, more than a small model's
    forward pass."""

    _fast_fields: tuple = ()
    _fast_names: frozenset = frozenset()
    _one_of: tuple = ()

    def load_fast(self, data):
        """Exactly `load(data)`: the same result, the same errors. Rows whose every value
        passes a plain type-and-bounds check are loaded here; anything else (a missing or
        null value, an image, an unknown field, a value out of bounds) goes to `load`,
        which decides and words the messages."""
        if type(data) is not dict or not self._fast_names.issuperset(data):
            return self.load(data)
        loaded = {}
        for name, check, required, default in self._fast_fields:
            value = data.get(name, _ABSENT)
            if value is _ABSENT:
                if required:
                    return self.load(data)
                if default is not _ABSENT:
                    loaded[name] = default
                continue
            value = check(value)
            if value is SLOW:
                return self.load(data)
            loaded[name] = value
        for group in self._one_of:
            if sum(loaded.get(name) is not None for name in group) != 1:
                return self.load(data)
        return loaded


def _between(low, high):
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    return lambda value: low <= value <= high


def _fast_check(spec: FieldSpec, field: fields.Field):
    """A value -> loaded value (or SLOW) function that accepts only what `field` accepts and
    loads it to the same thing; None where every value goes to marshmallow."""
    if isinstance(field, NumberArray):
        low, high = spec.min_length or 0, spec.max_length or math.inf

        def array(value):
            if type(value) is not list or not low <= len(value) <= high:
                return SLOW
            return field.load_valid(value)
        return array
    if spec.type == "boolean":
        return lambda value: value if type(value) is bool else SLOW
    if spec.type == "integer":
        in_range = _between(spec.min, spec.max)
        return lambda value: value if type(value) is int and in_range(value) else SLOW
    if spec.type == "number":
        in_range = _between(spec.min, spec.max)

        def number(value):
            if type(value) is float:
                number = value
            elif type(value) is int:
                try:
                    number = float(value)
                except OverflowError:
                    return SLOW
            else:
                return SLOW
            return number if math.isfinite(number) and in_range(number) else SLOW
        return number
    if spec.type == "string":
        in_length = _between(spec.min_length, spec.max_length)

        def string(value):
            if type(value) is not str or not in_length(len(value)):
                return SLOW
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return SLOW
            return value
        return string
    return None  # images and arrays of strings: rare in bulk, and costly to mirror


def build_input_schema(spec: ModelSpec) -> InputSchema:
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

    fast = []
    for field_spec in spec.inputs:
        field = attrs[field_spec.name]
        check = _fast_check(field_spec, field)
        default = field.load_default
        if check is None or callable(default):
            check = _always_slow
        fast.append((field_spec.name, check, field.required, _ABSENT if default is missing else default))
    attrs["_fast_fields"] = tuple(fast)
    attrs["_fast_names"] = frozenset(attrs_name for attrs_name, *_ in fast)
    attrs["_one_of"] = one_of
    attrs["_exactly_one"] = _exactly_one
    attrs["Meta"] = type("Meta", (), {"unknown": RAISE})
    schema_class = type(f"{spec.name.title().replace('-', '').replace('_', '')}InputSchema", (InputSchema,), attrs)
    return schema_class()


def _always_slow(value):
    return SLOW


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
