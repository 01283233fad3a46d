"""`InputSchema.load_fast` (batch jobs) must be `load` (the API) exactly: the same rows
accepted, the same canonical input (so the same cache key), the same error messages."""
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from models.cache import canonical_json
from models.declaration import parse_repository
from models.registry import Registry
from tasks.settings import Settings

MIXED = parse_repository({"models": [{
    "name": "mixed", "kind": "torch", "version": "1", "entrypoint": "pkg.mod:Cls",
    "inputs": {
        "n": {"type": "number", "min": -1, "max": 1},
        "i": {"type": "integer", "default": 3, "min": 0, "max": 10},
        "free": {"type": "integer"},
        "flag": {"type": "boolean", "default": False},
        "s": {"type": "string", "min_length": 2, "max_length": 5},
        "ints": {"type": "array", "items": "integer", "min_length": 1, "max_length": 4},
        "reals": {"type": "array", "items": "number", "max_length": 3},
        "words": {"type": "array", "items": "string"},
        "a": {"type": "number"},
        "b": {"type": "string"},
    },
    "one_of": [["a", "b"]],
}]})[0]

# The same examples each run: the suite passes or fails by the code, never by the draw (a
# busy machine must not trip the health checks either).
REPEATABLE = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": list(HealthCheck)}


@pytest.fixture(scope="module")
def schemas():
    registry = Registry.from_file(Settings().model_repository)
    found = {name: registry.input_schema(name) for name in ("digits", "minilm", "pi")}
    found["mixed"] = Registry([MIXED]).input_schema("mixed")
    return found


def outcome(load, row):
    try:
        loaded = load(row)
    except ValidationError as exc:
        return "rejected", exc.messages
    # Typed (1 and 1.0 differ) like canonical_json, which refuses ints past 64 bits.
    return "accepted", json.dumps(loaded, sort_keys=True), loaded


def assert_same(schema, row):
    expected = outcome(schema.load, row)
    assert outcome(schema.load_fast, row) == expected
    return expected[0]


numbers = st.one_of(
    st.integers(-20, 20), st.floats(-20, 20), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(), st.just(10 ** 400), st.just(-(10 ** 400)), st.booleans(),
)
scalars = st.one_of(numbers, st.none(), st.text(max_size=8), st.just("\ud800"), st.just("3"))
values = st.one_of(scalars, st.lists(scalars, max_size=6), st.lists(numbers, max_size=6),
                   st.lists(st.integers(-2, 12), min_size=1, max_size=5))


def rows(names):
    keys = st.sampled_from([*names, "unknown"])
    return st.one_of(st.dictionaries(keys, values, max_size=len(names) + 1), values)


# Pixels near the bounds and the declared length, so that both sides of each check occur.
pixel = st.one_of(st.integers(-1, 17), st.floats(-0.5, 16.5), st.sampled_from([0, 16, 0.0, 16.0, -0.0]),
                  st.sampled_from([math.nan, math.inf, True, None, "1", 10 ** 400]))
digit_rows = st.one_of(
    st.builds(lambda pixels: {"pixels": pixels}, st.lists(pixel, min_size=63, max_size=65)),
    st.builds(lambda pixels: {"pixels": pixels}, st.lists(st.integers(0, 16), min_size=64, max_size=64)),
    st.builds(lambda pixels: {"pixels": pixels, "image": None}, st.lists(st.integers(0, 16), min_size=64, max_size=64)),
    rows(["pixels", "image"]),
)


@settings(max_examples=600, **REPEATABLE)
@given(digit_rows)
def test_digits_rows_load_the_same(schemas, row):
    assert_same(schemas["digits"], row)


@settings(max_examples=400, **REPEATABLE)
@given(st.one_of(rows(["text", "normalize"]),
                 st.fixed_dictionaries({"text": st.text(max_size=2100)}, optional={"normalize": scalars})))
def test_minilm_rows_load_the_same(schemas, row):
    assert_same(schemas["minilm"], row)


@settings(max_examples=400, **REPEATABLE)
@given(rows(["rounds", "points_per_round", "pause_s", "seed"]))
def test_pi_rows_load_the_same(schemas, row):
    assert_same(schemas["pi"], row)


# Values at and around each field's bounds, mostly of the right type.
NEAR = {
    "n": st.one_of(st.floats(-1.5, 1.5), st.integers(-2, 2), numbers),
    "i": st.one_of(st.integers(-1, 11), numbers),
    "free": st.one_of(st.integers(), st.just(10 ** 400), numbers),
    "flag": st.one_of(st.booleans(), scalars),
    "s": st.one_of(st.text(min_size=1, max_size=6), st.just("a\ud800"), scalars),
    "ints": st.lists(st.one_of(st.integers(-1, 12), st.booleans(), st.just(1.0)), max_size=5),
    "reals": st.lists(st.one_of(st.floats(-5, 5), st.integers(), st.just(10 ** 400)), max_size=4),
    "words": st.lists(st.text(max_size=3), max_size=3),
    "a": st.one_of(st.floats(), st.integers(-3, 3)),
    "b": st.text(max_size=3),
}
mixed_rows = st.one_of(
    rows([field.name for field in MIXED.inputs]),
    st.fixed_dictionaries({}, optional={field.name: values for field in MIXED.inputs}),
    st.fixed_dictionaries({"a": NEAR["a"]}, optional={name: near for name, near in NEAR.items() if name != "a"}),
    st.fixed_dictionaries({"b": NEAR["b"]}, optional={name: near for name, near in NEAR.items() if name != "b"}),
)


@settings(max_examples=1500, **REPEATABLE)
@given(mixed_rows)
def test_every_field_kind_loads_the_same(schemas, row):
    assert_same(schemas["mixed"], row)


@pytest.mark.parametrize("name, row", [
    ("digits", {"pixels": [float(n % 17) for n in range(64)]}),
    ("digits", {"pixels": list(range(17)) * 3 + [0] * 13}),
    ("minilm", {"text": "Ferry serves models."}),
    ("minilm", {"text": "héllo", "normalize": False}),
    ("pi", {}),
    ("pi", {"rounds": 3, "pause_s": 0}),
    ("mixed", {"n": 0.5, "s": "abc", "ints": [1, 2], "reals": [1, 2.5], "a": 1}),
])
def test_ordinary_rows_never_reach_marshmallow(schemas, name, row, monkeypatch):
    schema = schemas[name]
    expected = schema.load(row)

    def refuse(*args, **kwargs):
        raise AssertionError("load_fast fell back to marshmallow for an ordinary row")

    monkeypatch.setattr(schema, "load", refuse)
    assert canonical_json(schema.load_fast(row)) == canonical_json(expected)


def test_a_huge_integer_is_an_error_not_a_crash(schemas):
    # Python's json module reads 1e400 written as digits into an int no float can hold.
    with pytest.raises(ValidationError) as error:
        schemas["digits"].load({"pixels": [10 ** 400] + [0] * 63})
    assert 0 in error.value.messages["pixels"]


def test_finite_numbers_whose_sum_overflows_are_accepted(schemas):
    row = {"reals": [1e308, 1e308, -1e308], "a": 1}
    assert assert_same(schemas["mixed"], row) == "accepted"
