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
