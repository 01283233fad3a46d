import base64
import io

import pytest
from marshmallow import ValidationError
from PIL import Image

from models.declaration import parse_repository
from models.registry import Registry, UnknownVersion
from models.schemas import build_input_schema, input_json_schema
from tasks.settings import Settings


def _model(**overrides):
    model = {"name": "m", "kind": "torch", "version": "1", "entrypoint": "pkg.mod:Cls",
             "inputs": {"x": {"type": "number", "min": 0, "max": 1, "required": True}}}
    model.update(overrides)
    return {"models": [{key: value for key, value in model.items() if value is not None}]}


def _png(size=(16, 16)) -> str:
    buffer = io.BytesIO()
    Image.new("L", size, 255).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def registry():
    return Registry.from_file(Settings().model_repository)


def test_shipped_repository_declares_the_builtin_models(registry):
    assert registry.names() == ["digits", "minilm", "pi", "textstats"]
    assert registry.get("minilm").max_batch_size == 32
    assert registry.queues == {"realtime-cpu"}


@pytest.mark.parametrize("broken, complaint", [
    ({"kind": "pickle"}, "kind"),
    ({"version": "has space"}, "version"),
    ({"inputs": {"x": {"type": "tensor"}}}, "type"),
    ({"inputs": {"x": {"type": "array"}}}, "items"),
    ({"one_of": [["x", "y"]]}, "one_of"),
    ({"entrypoint": "os.system"}, "entrypoint"),
])
def test_invalid_declarations_fail_loudly(broken, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_repository(_model(**broken))


def test_duplicate_names_are_rejected():
    document = _model()
    document["models"].append(dict(document["models"][0]))
    with pytest.raises(ValueError, match="twice"):
        parse_repository(document)


def test_unbounded_strings_get_a_default_bound():
    spec = parse_repository(_model(inputs={"t": {"type": "string"}}))[0]
    assert spec.inputs[0].max_length == 10_000


def test_minilm_schema_applies_defaults_and_bounds(registry):
    schema = registry.input_schema("minilm")
    assert schema.load({"text": "hi"}) == {"text": "hi", "normalize": True}
    with pytest.raises(ValidationError) as error:
        schema.load({"text": "x" * 2001})
    assert "text" in error.value.messages
    with pytest.raises(ValidationError) as error:
        schema.load({"text": ""})
    assert "text" in error.value.messages
    with pytest.raises(ValidationError) as error:
        schema.load({"normalize": True})
    assert error.value.messages == {"text": ["Missing data for required field."]}


def test_digits_schema_checks_each_pixel(registry):
    schema = registry.input_schema("digits")
    pixels = [0] * 64
    assert schema.load({"pixels": pixels}) == {"pixels": [0.0] * 64}
    with pytest.raises(ValidationError) as error:
        schema.load({"pixels": [17] + [0] * 63})
    assert 0 in error.value.messages["pixels"]
    with pytest.raises(ValidationError) as error:
        schema.load({"pixels": ["a"] * 64})
    assert "pixels" in error.value.messages
    with pytest.raises(ValidationError):
        schema.load({"pixels": [float("nan")] * 64})


def test_digits_schema_wants_exactly_one_of_pixels_and_image(registry):
    schema = registry.input_schema("digits")
    with pytest.raises(ValidationError) as error:
        schema.load({"pixels": [0] * 64, "image": _png()})
    assert set(error.value.messages) == {"pixels", "image"}
    assert schema.load({"image": _png()})["image"]


@pytest.mark.parametrize("value, complaint", [
    ("not base64!!", "base64"),
    (base64.b64encode(b"GIF89a....").decode(), "PNG or JPEG"),
])
def test_images_that_are_not_images_are_rejected(registry, value, complaint):
    with pytest.raises(ValidationError) as error:
        registry.input_schema("digits").load({"image": value})
    assert complaint in error.value.messages["image"][0]


def test_one_image_in_any_spelling_is_one_input(registry):
    """A data URL, wrapped base64 and plain base64 of one file load alike, so they share a
    cache key."""
    schema, plain = registry.input_schema("digits"), _png()
    wrapped = "\n".join(plain[start:start + 76] for start in range(0, len(plain), 76))
    loaded = [schema.load({"image": value}) for value in (plain, "data:image/png;base64," + plain, wrapped)]
    assert loaded == [{"image": plain}] * 3


def test_integer_fields_are_strict():
    spec = parse_repository(_model(inputs={"k": {"type": "integer", "min": 1, "max": 5}}))[0]
    schema = build_input_schema(spec)
    assert schema.load({"k": 3}) == {"k": 3}
    for bad in (0, 6, 2.5, "3"):
        with pytest.raises(ValidationError):
            schema.load({"k": bad})


def test_json_schema_mirrors_the_declaration(registry):
    schema = input_json_schema(registry.get("digits"))
    assert schema["properties"]["pixels"] == {
        "type": "array", "items": {"type": "number", "minimum": 0.0, "maximum": 16.0},
        "minItems": 64, "maxItems": 64,
        "description": "8x8 grey levels, row by row, 0 (background) to 16 (ink).",
    }
    assert schema["additionalProperties"] is False
    assert input_json_schema(registry.get("minilm"))["required"] == ["text"]


@pytest.mark.parametrize("pixels, index, message", [
    ([True] + [0] * 63, 0, "Not a valid number."),
    ([0] * 63 + ["1"], 63, "Not a valid number."),
    ([0] * 5 + [float("inf")] + [0] * 58, 5, "Special numeric values"),
    ([0] * 7 + [-0.5] + [0] * 56, 7, "Must be greater than or equal to 0"),
    ([0] * 9 + [None] + [0] * 54, 9, "Not a valid number."),
])
def test_number_arrays_name_each_bad_item(registry, pixels, index, message):
    with pytest.raises(ValidationError) as error:
        registry.input_schema("digits").load({"pixels": pixels})
    assert list(error.value.messages["pixels"]) == [index]
    assert error.value.messages["pixels"][index][0].startswith(message)


def test_integer_arrays_are_strict():
    spec = parse_repository(_model(inputs={"ids": {"type": "array", "items": "integer", "min": 1, "max_length": 3}}))[0]
    schema = build_input_schema(spec)
    assert schema.load({"ids": [1, 2]}) == {"ids": [1, 2]}
    for bad in ([1.0], [0], [1, 2, 3, 4], "1,2", [True]):
        with pytest.raises(ValidationError):
            schema.load({"ids": bad})


def test_time_limits_and_retries_have_defaults_and_are_checked():
    from tests.fake_models import declaration

    [spec] = parse_repository({"models": [declaration("m", "Echo", timeout_s=10)]})
    assert (spec.timeout_s, spec.hard_timeout_s) == (10, 40)
    assert (spec.max_retries, spec.retry_backoff_s, spec.retry_backoff_max_s) == (3, 1.0, 30.0)
    [spec] = parse_repository({"models": [declaration("m", "Echo", hard_timeout_s=120, retries={"max": 0})]})
    assert spec.hard_timeout_s == 120 and spec.max_retries == 0
    with pytest.raises(ValueError, match="hard_timeout_s must be longer"):
        parse_repository({"models": [declaration("m", "Echo", timeout_s=10, hard_timeout_s=5)]})


@pytest.mark.parametrize("broken, complaint", [
    ({"kind": "http", "entrypoint": None}, "A http model needs url"),
    ({"kind": "http", "url": "ftp://models.example/predict", "entrypoint": None}, "url"),
    ({"kind": "subprocess", "entrypoint": None}, "A subprocess model needs command"),
    ({"kind": "subprocess", "command": ["python", "x.py"]}, "A subprocess model has no entrypoint"),
    ({"kind": "torch", "url": "http://models.example/predict"}, "A torch model has no url"),
])
def test_each_kind_declares_its_own_fields(broken, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_repository(_model(**broken))


def test_a_model_with_several_versions_marks_one_default():
    first = _model(version="1")["models"][0]
    second = {**first, "version": "2"}
    with pytest.raises(ValueError, match="2 versions of model .* none marked `default: true`"):
        parse_repository({"models": [first, second]})
    registry = Registry(parse_repository({"models": [first, {**second, "default": True}]}))
    assert registry.get(first["name"]).version == "2"
    assert registry.get(first["name"], "1").version == "1"
    assert [spec.version for spec in registry.versions(first["name"])] == ["1", "2"]
    with pytest.raises(UnknownVersion):
        registry.get(first["name"], "3")


def test_integers_are_bounded_to_64_bits_even_when_the_declaration_forgets():
    spec = parse_repository(_model(inputs={"n": {"type": "integer", "required": True}}))[0]
    schema = build_input_schema(spec)
    assert schema.load({"n": 2**63 - 1}) == {"n": 2**63 - 1}
    with pytest.raises(ValidationError):
        schema.load({"n": 2**64})
