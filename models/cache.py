"""The prediction cache: `{prefix}cache:{model}:{version}:{sha256 of canonical input}`."""
from __future__ import annotations

import hashlib

import orjson


def canonical_json(value) -> str:
    """One spelling per value: sorted keys, no spaces (inputs are validated, so no NaN)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def input_digest(value) -> str:
    """sha256 of `canonical_json(value)`, hashed from orjson's bytes as they come."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


# One SET ... EX per key. Sent as one command, the keys and outputs cost the client a
# fraction of what a pipeline of SETs does (argument handling per command in redis-py).
_SET_MANY = """
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
end
return #KEYS
"""


class PredictionCache:
    def __init__(self, redis, prefix: str = "ferry:"):
        self.redis = redis
        self.prefix = prefix
        self._set_many = None

    def key(self, model: str, version: str, validated_input: dict) -> str:
        return f"{self.prefix}cache:{model}:{version}:{input_digest(validated_input)}"

    def key_prefix(self, model: str, version: str) -> str:
        """What `key` puts before the digest: `key_prefix(m, v) + input_digest(x) == key(m, v, x)`."""
        return f"{self.prefix}cache:{model}:{version}:"

    def set_many(self, keys: list[str], encoded_outputs: list[str], ttl_s: int) -> None:
        """`set` for many keys in one round trip and one command."""
        if ttl_s <= 0 or not keys:
            return
        if self._set_many is None:
            self._set_many = self.redis.register_script(_SET_MANY)
        self._set_many(keys=keys, args=[ttl_s, *encoded_outputs])

    def get(self, key: str) -> dict | None:
        """The cached output, or None."""
        raw = self.redis.get(key)
        return None if raw is None else orjson.loads(raw)

    def set(self, key: str, encoded_output: str, ttl_s: int, *, pipe=None) -> None:
        """Store an output already encoded by `models.base.encode_output`."""
        if ttl_s <= 0:
            return
        (pipe or self.redis).set(key, encoded_output, ex=ttl_s)

    def drop(self, model: str, version: str) -> int:
        """Remove every cached output of a model version (it was removed: a model registered
        again under the same name and version must not answer with the old one's outputs)."""
        dropped = 0
        batch = []
        for key in self.redis.scan_iter(match=f"{self.prefix}cache:{model}:{version}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                dropped += self.redis.unlink(*batch)
                batch = []
        if batch:
            dropped += self.redis.unlink(*batch)
        return dropped
