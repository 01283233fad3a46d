"""The cache-hit path's memo of bodies already validated: it answers exactly what validating
afresh would, and never outlives the cache entry or the version it was made for."""
from models.base import encode_output


def _cache(app, version, text, output):
    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("minilm", version).load({"text": text})
    key = ferry.cache.key("minilm", version, validated)
    ferry.cache.set(key, encode_output(output), ttl_s=60)
    return key


def test_a_repeated_body_is_answered_as_validating_it_would(app, client):
    _cache(app, "1.0.0", "hi", {"embedding": [1.0]})
    for _ in range(3):  # the first validates, the others use the memo
        default = client.post("/models/minilm/predictions", json={"input": {"text": "hi"}})
        pinned = client.post("/models/minilm/predictions", json={"input": {"text": "hi"}, "version": "1.0.0"})
        for answer in (default, pinned):
            assert (answer.status_code, answer.json["version"], answer.json["output"]) == (200, "1.0.0",
                                                                                           {"embedding": [1.0]})
        unknown = client.post("/models/minilm/predictions", json={"input": {"text": "hi"}, "version": "2.0.0"})
        assert unknown.status_code == 404


def test_an_expired_entry_is_a_miss_again(app, client, sender):
    key = _cache(app, "1.0.0", "gone", {"embedding": [1.0]})
    assert client.post("/models/minilm/predictions", json={"input": {"text": "gone"}}).status_code == 200
    app.extensions["ferry"].redis.delete(key)
    miss = client.post("/models/minilm/predictions", json={"input": {"text": "gone"}})
    assert miss.status_code == 202 and miss.json["cached"] is False
    assert len(sender.sent) == 1
