"""API keys: random tokens shown once; Redis keeps only a SHA-256 of each, with its scopes.

    {prefix}api-keys     hash: sha256(token) -> JSON {id, name, scopes, created_at}

A token carries 256 random bits, so one round of SHA-256 is enough: there is nothing to
guess from the digest, and a slow password hash would cost every request.

`FERRY_ADMIN_KEY`, when set, is one more key with every scope, held by the API's
environment and never written to Redis, so that a fresh deployment (and `ferry dev`)
can be used before any key is created. It is revoked by unsetting it.

An API process remembers a key it has found for `cache_s` seconds (FERRY_KEY_CACHE_S), so
most requests cost no lookup; a key revoked elsewhere is refused there within that time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import secrets
import time

PREDICT, ADMIN = "predict", "admin"
SCOPES = (PREDICT, ADMIN)
# Recognisable in logs and to secret scanners; the rest is random.
TOKEN_PREFIX = "ferry_"
MIN_BOOTSTRAP_LENGTH = 16
_CACHE_MAX = 4096


@dataclasses.dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: float

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "scopes": list(self.scopes)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> "ApiKey":
        data = json.loads(raw)
        return cls(id=data["id"], name=data["name"], scopes=tuple(data["scopes"]), created_at=data["created_at"])


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_scopes(scopes) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"Unknown scope(s) {', '.join(unknown)}; the scopes are {', '.join(SCOPES)}.")
    if not scopes:
        raise ValueError(f"A key needs at least one scope ({', '.join(SCOPES)}).")
    return tuple(scope for scope in SCOPES if scope in scopes)


class KeyStore:
    def __init__(self, redis, prefix: str = "ferry:", bootstrap_token: str = "", cache_s: float = 0.0):
        self.redis = redis
        self.key = f"{prefix}api-keys"
        self.cache_s = cache_s
        self._found: dict[str, tuple[float, ApiKey]] = {}  # digest -> (until, key); found keys only
        self.bootstrap: tuple[str, ApiKey] | None = None
        if bootstrap_token:
            if len(bootstrap_token) < MIN_BOOTSTRAP_LENGTH:
                raise ValueError(f"FERRY_ADMIN_KEY must be at least {MIN_BOOTSTRAP_LENGTH} characters long.")
            hashed = digest(bootstrap_token)
            self.bootstrap = (hashed, ApiKey(id=f"env-{hashed[:12]}", name="FERRY_ADMIN_KEY", scopes=SCOPES,
                                             created_at=0.0))

    def create(self, name: str, scopes) -> tuple[str, ApiKey]:
        """A new key; the token is returned here and never again."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        api_key = ApiKey(id=secrets.token_hex(8), name=name, scopes=check_scopes(scopes), created_at=time.time())
        self.redis.hset(self.key, digest(token), api_key.to_json())
        return token, api_key

    def lookup(self, token: str) -> ApiKey | None:
        hashed = digest(token)
        if self.bootstrap is not None and hmac.compare_digest(hashed, self.bootstrap[0]):
            return self.bootstrap[1]
        remembered = self._found.get(hashed)
        if remembered is not None and remembered[0] > time.monotonic():
            return remembered[1]
        raw = self.redis.hget(self.key, hashed)
        if not raw:
            return None
        api_key = ApiKey.from_json(raw)
        if self.cache_s > 0:
            if len(self._found) >= _CACHE_MAX:
                self._found.clear()
            self._found[hashed] = (time.monotonic() + self.cache_s, api_key)
        return api_key

    def _all(self) -> dict[str, ApiKey]:
        return {hashed: ApiKey.from_json(raw) for hashed, raw in self.redis.hgetall(self.key).items()}

    def list(self) -> list[ApiKey]:
        stored = sorted(self._all().values(), key=lambda api_key: api_key.created_at)
        return ([self.bootstrap[1]] if self.bootstrap else []) + stored

    def revoke(self, key_id: str) -> ApiKey | None:
        """Delete the key with this id; its token is refused from the next request on."""
        for hashed, api_key in self._all().items():
            if api_key.id == key_id:
                self.redis.hdel(self.key, hashed)
                self._found.pop(hashed, None)
                return api_key
        return None
