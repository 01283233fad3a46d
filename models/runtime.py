"""Models registered at run time (`POST /models`), shared by every API process and worker.

    {prefix}models              hash: "{name}:{version}" -> {"declaration": ..., "revision": id}, as JSON
    {prefix}models:generation   counter, moved by every change, so each process knows when to re-read

Only `http` models are registered this way, and only towards hosts the operator allows
(`FERRY_HTTP_MODEL_HOSTS`): a caller of the API can point Ferry at a model server, never
make a worker run a program. `torch` and `subprocess` models come from the repository file.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import redis as redis_lib

from models.declaration import ModelSpec, parse_repository

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """The declaration cannot be registered; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422, field: str = "url"):
        super().__init__(message)
        self.status, self.field = status, field


def check_serving(declaration: dict, routable: Callable[[str], bool], visibility_timeout_s: float) -> None:
    """Refuse a declaration that no worker would run as it asks: on a queue that is not a
    real-time one (its predictions would wait forever, or run on the batch worker), or with
    time limits the broker's visibility timeout cuts short (it would deliver them again while
    they still run)."""
    (spec,) = parse_repository({"models": [declaration]}, source="the declaration")
    if not routable(spec.queue):
        raise RegistrationError(f"Queue {spec.queue!r} is not a real-time queue: use realtime-cpu, realtime-gpu, "
                                "realtime-cuda-N, a queue of the repository file's models or one a running "
                                "worker consumes.", field="queue")
    longest = max(spec.hard_timeout_s, spec.retry_backoff_max_s)
    if longest >= visibility_timeout_s:
        raise RegistrationError(f"The hard time limit ({spec.hard_timeout_s:g} s: timeout_s + 30 unless given) and "
                                f"the longest retry wait ({spec.retry_backoff_max_s:g} s) must stay under "
                                f"FERRY_VISIBILITY_TIMEOUT_S ({visibility_timeout_s:g} s), after which the broker "
                                "delivers a prediction again while it still runs.", field="timeout_s")


def allowed_hosts(setting: str) -> frozenset[str]:
    """`FERRY_HTTP_MODEL_HOSTS`: comma-separated `host` or `host:port`, matched exactly; an
    IPv6 address is written as in a URL (`[::1]` or `[::1]:8100`, a bare `::1` also works)."""
    hosts = (part.strip().lower() for part in setting.split(","))
    return frozenset(host[1:-1] if host.startswith("[") and host.endswith("]") else host for host in hosts if host)


def check_url(url: str, hosts: frozenset[str]) -> None:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise RegistrationError("The model's URL must not carry credentials.")
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not hosts:
        raise RegistrationError("Registering http models is off: the operator has allowed no hosts "
                                "(FERRY_HTTP_MODEL_HOSTS).", status=403)
    if host not in hosts and (f"[{host}]:{port}" if ":" in host else f"{host}:{port}") not in hosts:
        raise RegistrationError(f"Host {parts.netloc!r} is not among the hosts the operator allows for "
                                "http models (FERRY_HTTP_MODEL_HOSTS).", status=403)


class RuntimeModels:
    def __init__(self, redis, prefix: str = "ferry:", max_models: int = 100, hosts: frozenset[str] | None = None):
        self.redis = redis
        self.key = f"{prefix}models"
        self.generation_key = f"{prefix}models:generation"
        self.max_models = max_models
        # Checked again whenever declarations are read: a host the operator no longer allows
        # stops serving on the next restart, whatever was registered before.
        self.hosts = hosts

    def generation(self) -> str:
        return self.redis.get(self.generation_key) or ""

    def _entries(self, client) -> dict[str, dict]:
        return {field: json.loads(raw) for field, raw in client.hgetall(self.key).items()}

    def specs(self, reserved: set[str] = frozenset()) -> list[ModelSpec]:
        specs = []
        for field, entry in sorted(self._entries(self.redis).items()):
            try:
                (spec,) = parse_repository({"models": [entry["declaration"]]}, source=f"runtime model {field}")
                if self.hosts is not None:
                    check_url(spec.url, self.hosts)
            except ValueError as exc:  # written by an older Ferry, or its host no longer allowed: skip it, loudly
                log.error("runtime model %s is not served: %s", field, exc)
                continue
            if spec.name in reserved:  # the operator has since declared this name in the repository file
                log.error("runtime model %s is not served: the repository file declares %r", field, spec.name)
                continue
            specs.append(dataclasses.replace(spec, revision=entry["revision"]))
        return specs

    def register(self, declaration: dict, reserved: set[str]) -> ModelSpec:
        """Add one version of an http model. The first version of a name is its default;
        a later one becomes the default when it says `default: true`."""
        declaration = dict(declaration)
        if declaration.get("kind") != "http":
            raise RegistrationError("Only http models are registered through the API; torch and subprocess "
                                    "models are declared in the operator's model repository file.", field="kind")
        name, version = declaration["name"], declaration["version"]
        if name in reserved:
            raise RegistrationError(f"Model {name!r} is declared in the model repository file; "
                                    "choose another name.", status=409, field="name")
        field = f"{name}:{version}"
        revision = uuid.uuid4().hex[:12]

        def write(pipe: redis_lib.client.Pipeline) -> None:
            entries = self._entries(pipe)
            if field in entries:
                raise RegistrationError(f"Model {name!r} version {version!r} is registered already; "
                                        "register a new version, or DELETE it first.", status=409, field="version")
            if len(entries) >= self.max_models:
                raise RegistrationError(f"{self.max_models} model versions are registered already "
                                        "(FERRY_RUNTIME_MODELS_MAX); remove one first.", status=409, field="name")
            siblings = {key: entry for key, entry in entries.items() if entry["declaration"]["name"] == name}
            declaration["default"] = bool(declaration.get("default")) or not siblings
            pipe.multi()
            if declaration["default"]:
                for key, entry in siblings.items():
                    if entry["declaration"].get("default"):
                        self._put(pipe, key, {**entry, "declaration": {**entry["declaration"], "default": False}})
            self._put(pipe, field, {"declaration": declaration, "revision": revision, "registered_at": time.time()})
            self._moved(pipe)

        self.redis.transaction(write, self.key)
        (spec,) = parse_repository({"models": [declaration]}, source="the declaration")
        return dataclasses.replace(spec, revision=revision)

    def _put(self, pipe, field: str, entry: dict) -> None:
        pipe.hset(self.key, field, json.dumps(entry))

    def _moved(self, pipe) -> None:
        # A fresh value, never a count: a Redis that lost its data must not hand out a
        # generation some process already holds for other contents.
        pipe.set(self.generation_key, uuid.uuid4().hex)

    def has(self, name: str) -> bool:
        return any(entry["declaration"]["name"] == name for entry in self._entries(self.redis).values())

    def remove(self, name: str, version: str | None = None) -> list[dict]:
        """Remove every version of `name` (or only `version`); returns the removed entries
        (declaration and revision). Removing the default of several versions makes the most
        recently registered remaining one the default."""
        removed: list[dict] = []

        def write(pipe: redis_lib.client.Pipeline) -> None:
            removed.clear()
            siblings = {key: entry for key, entry in self._entries(pipe).items()
                        if entry["declaration"]["name"] == name}
            gone = {key: entry for key, entry in siblings.items()
                    if version in (None, entry["declaration"]["version"])}
            if not gone:
                return
            removed.extend(gone.values())
            left = {key: entry for key, entry in siblings.items() if key not in gone}
            pipe.multi()
            pipe.hdel(self.key, *gone)
            if left and not any(entry["declaration"].get("default") for entry in left.values()):
                newest = max(left, key=lambda key: left[key].get("registered_at", 0))
                self._put(pipe, newest, {**left[newest], "declaration": {**left[newest]["declaration"], "default": True}})
            self._moved(pipe)

        self.redis.transaction(write, self.key)
        return removed
