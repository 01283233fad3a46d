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
import uuid
from urllib.parse import urlsplit

import redis as redis_lib

from models.declaration import ModelSpec, parse_repository

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """The declaration cannot be registered; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422, field: str = "url"):
        super().__init__(message)
        self.status, self.field = status, field


def allowed_hosts(setting: str) -> frozenset[str]:
    """`FERRY_HTTP_MODEL_HOSTS`: comma-separated `host` or `host:port`, matched exactly."""
    return frozenset(part.strip().lower() for part in setting.split(",") if part.strip())


def check_url(url: str, hosts: frozenset[str]) -> None:
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise RegistrationError("The model's URL must not carry credentials.")
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not hosts:
        raise RegistrationError("Registering http models is off: the operator has allowed no hosts "
                                "(FERRY_HTTP_MODEL_HOSTS).", status=403)
    if host not in hosts and f"{host}:{port}" not in hosts:
        raise RegistrationError(f"Host {parts.netloc!r} is not among the hosts the operator allows for "
                                "http models (FERRY_HTTP_MODEL_HOSTS).", status=403)


class RuntimeModels:
    def __init__(self, redis, prefix: str = "ferry:", max_models: int = 100):
        self.redis = redis
        self.key = f"{prefix}models"
        self.generation_key = f"{prefix}models:generation"
        self.max_models = max_models

    def generation(self) -> str:
        return self.redis.get(self.generation_key) or "0"

    def specs(self) -> list[ModelSpec]:
        specs = []
        for field, raw in sorted(self.redis.hgetall(self.key).items()):
            entry = json.loads(raw)
            try:
                (spec,) = parse_repository({"models": [entry["declaration"]]}, source=f"runtime model {field}")
            except ValueError as exc:  # written by an older Ferry, say: skip it, loudly
                log.error("%s", exc)
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
            entries = {key: json.loads(raw) for key, raw in pipe.hgetall(self.key).items()}
            current = {key: entry["declaration"] for key, entry in entries.items()}
            if field in current:
                raise RegistrationError(f"Model {name!r} version {version!r} is registered already; "
                                        "register a new version, or DELETE it first.", status=409, field="version")
            siblings = {key: decl for key, decl in current.items() if decl["name"] == name}
            if not siblings and len({decl["name"] for decl in current.values()}) >= self.max_models:
                raise RegistrationError(f"{self.max_models} models are registered already "
                                        "(FERRY_RUNTIME_MODELS_MAX).", status=409, field="name")
            declaration["default"] = bool(declaration.get("default")) or not siblings
            pipe.multi()
            if declaration["default"]:
                for key, decl in siblings.items():
                    if decl.get("default"):
                        self._put(pipe, key, {**entries[key], "declaration": {**decl, "default": False}})
            self._put(pipe, field, {"declaration": declaration, "revision": revision})
            pipe.incr(self.generation_key)

        self.redis.transaction(write, self.key)
        (spec,) = parse_repository({"models": [declaration]}, source="the declaration")
        return dataclasses.replace(spec, revision=revision)

    def _put(self, pipe, field: str, entry: dict) -> None:
        pipe.hset(self.key, field, json.dumps(entry))

    def remove(self, name: str, version: str | None = None) -> list[dict]:
        """Remove every version of `name` (or only `version`); returns the removed declarations.
        Removing the default of several versions makes the newest remaining one the default."""
        removed: list[dict] = []

        def write(pipe: redis_lib.client.Pipeline) -> None:
            removed.clear()
            entries = {key: json.loads(raw) for key, raw in pipe.hgetall(self.key).items()}
            current = {key: entry["declaration"] for key, entry in entries.items()}
            siblings = {key: decl for key, decl in current.items() if decl["name"] == name}
            gone = {key: decl for key, decl in siblings.items() if version in (None, decl["version"])}
            if not gone:
                return
            removed.extend(gone.values())
            left = [key for key in siblings if key not in gone]
            pipe.multi()
            pipe.hdel(self.key, *gone)
            if left and not any(siblings[key].get("default") for key in left):
                highest = max(left)  # the highest remaining version, in sort order, becomes the default
                self._put(pipe, highest, {**entries[highest], "declaration": {**siblings[highest], "default": True}})
            pipe.incr(self.generation_key)

        self.redis.transaction(write, self.key)
        return removed
