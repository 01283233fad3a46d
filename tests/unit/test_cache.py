from models.cache import PredictionCache, canonical_json, input_digest
from models.registry import Registry
from tasks.settings import Settings


def test_canonical_json_ignores_key_order():
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}'


def test_key_holds_model_version_and_input_hash(fake_redis):
    cache = PredictionCache(fake_redis, "ferry:")
    key = cache.key("minilm", "1.0.0", {"text": "hi", "normalize": True})
    assert key == f"ferry:cache:minilm:1.0.0:{input_digest({'normalize': True, 'text': 'hi'})}"
    assert cache.key("minilm", "1.0.1", {"text": "hi", "normalize": True}) != key
    assert cache.key("minilm", "1.0.0", {"text": "hi", "normalize": False}) != key


def test_defaults_applied_before_hashing_make_equal_inputs_share_a_key(fake_redis):
    registry = Registry.from_file(Settings().model_repository)
    schema = registry.input_schema("minilm")
    cache = PredictionCache(fake_redis)
    implicit = cache.key("minilm", "1.0.0", schema.load({"text": "hello"}))
    explicit = cache.key("minilm", "1.0.0", schema.load({"normalize": True, "text": "hello"}))
    assert implicit == explicit


def test_integer_and_float_pixels_share_a_key(fake_redis):
    schema = Registry.from_file(Settings().model_repository).input_schema("digits")
    cache = PredictionCache(fake_redis)
    assert cache.key("digits", "1", schema.load({"pixels": [1] * 64})) == \
        cache.key("digits", "1", schema.load({"pixels": [1.0] * 64}))


def test_set_get_and_ttl(fake_redis):
    cache = PredictionCache(fake_redis)
    cache.set("ferry:cache:m:1:x", '{"label":3}', ttl_s=60)
    assert cache.get("ferry:cache:m:1:x") == {"label": 3}
    assert 0 < fake_redis.ttl("ferry:cache:m:1:x") <= 60
    assert cache.get("ferry:cache:m:1:missing") is None


def test_zero_ttl_disables_caching(fake_redis):
    cache = PredictionCache(fake_redis)
    cache.set("ferry:cache:m:1:x", '{"label":3}', ttl_s=0)
    assert cache.get("ferry:cache:m:1:x") is None


def test_outputs_are_encoded_as_strict_json_whoever_writes_them():
    import json

    import numpy as np
    import pytest

    from models.base import encode_output

    # orjson's spelling: compact, UTF-8 as it is.
    assert encode_output({"label": 3, "word": "été", "p": [0.5, 1e-05]}) == '{"label":3,"word":"été","p":[0.5,0.00001]}'
    # What orjson refuses or would write as null goes to the stdlib, which decides as before.
    assert encode_output({"a": None, "b": "null"}) == '{"a":null,"b":"null"}'
    assert encode_output({1: np.float64(0.5), "big": 2**70}) == '{"1":0.5,"big":1180591620717411303424}'
    import dataclasses
    import datetime

    @dataclasses.dataclass
    class Point:
        x: int

    for bad in ({"p": float("nan")}, {"p": [float("inf")]}, {"p": np.float32(0.5)}, {"p": object()},
                {"when": datetime.datetime(2026, 1, 1)}, {"p": Point(1)}, {"p": np.array([1.0])}):
        with pytest.raises(TypeError, match="not plain JSON"):
            encode_output(bad)
    assert json.loads(encode_output({"p": [0.1, 2.5e-7]})) == {"p": [0.1, 2.5e-7]}
