"""The registry: what models exist (for everyone) and how to build one (for workers).

Models come from two places: the operator's repository file (any kind), read at start,
and runtime registrations (`POST /models`, http only) kept in Redis by
`models.runtime.RuntimeModels`. Each process re-reads the runtime ones when their
generation counter moves: at once when asked for a model it does not know, and otherwise
at most every `refresh_s`.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from pathlib import Path

from marshmallow import Schema

from models.base import Model
from models.declaration import ModelSpec, default_versions, load_repository
from models.schemas import build_input_schema

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


class UnknownModel(KeyError):
    pass


class UnknownVersion(UnknownModel):
    pass


class _Catalogue:
    """One consistent view of every model; replaced whole when the runtime models change."""

    def __init__(self, specs: list[ModelSpec]):
        self.by_key = {(spec.name, spec.version): spec for spec in specs}
        self.defaults = default_versions(specs)
        self.queues = frozenset(spec.queue for spec in specs)


class Registry:
    def __init__(self, specs: list[ModelSpec], root: Path = ROOT, runtime=None, refresh_s: float = 1.0):
        self.root = root
        self.file_specs = list(specs)
        self.runtime = runtime
        self.refresh_s = refresh_s
        self._catalogue = _Catalogue(self.file_specs)
        self._generation: str | None = None  # never what Redis holds, so the first sync reads
        self._checked = float("-inf")
        self._sync_lock = threading.Lock()
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._metadata: dict[tuple[str, str], dict] = {}

    @classmethod
    def from_file(cls, path: str | Path, runtime=None, refresh_s: float = 1.0) -> "Registry":
        return cls(load_repository(path), runtime=runtime, refresh_s=refresh_s)

    def sync(self, force: bool = False) -> None:
        """Take in runtime registrations and removals made by any process."""
        if self.runtime is None or (not force and time.monotonic() - self._checked < self.refresh_s):
            return
        with self._sync_lock:
            if not force and time.monotonic() - self._checked < self.refresh_s:
                return  # another thread synced while this one waited for the lock
            try:
                generation = self.runtime.generation()
                if generation == self._generation:
                    return
                runtime_specs = self.runtime.specs(reserved={spec.name for spec in self.file_specs})
                self._catalogue = _Catalogue(self.file_specs + runtime_specs)
                self._generation = generation
                # Schemas and metadata of what is no longer served go with it.
                for cache in (self._schemas, self._metadata):
                    for key in [key for key in cache if key not in self._catalogue.by_key]:
                        cache.pop(key, None)
            finally:
                # From the attempt's end: a Redis that does not answer costs a request one
                # timeout here, not one for each lookup it makes after the last timed out.
                self._checked = time.monotonic()

    def _current(self) -> _Catalogue:
        try:
            self.sync()
        except Exception as exc:  # Redis away: serve what we know; the request itself will meet the outage
            log.warning("could not refresh the runtime models: %s", exc)
        return self._catalogue

    def names(self) -> list[str]:
        return sorted(self._current().defaults)

    def specs(self) -> list[ModelSpec]:
        """Every version of every model."""
        catalogue = self._current()
        return [catalogue.by_key[key] for key in sorted(catalogue.by_key)]

    def versions(self, name: str) -> list[ModelSpec]:
        found = [spec for spec in self.specs() if spec.name == name]
        if not found:
            raise UnknownModel(name)
        return found

    def get(self, name: str, version: str | None = None) -> ModelSpec:
        """The pinned version of model `name`, or the one it serves by default."""
        spec = self._lookup(self._current(), name, version)
        if spec is None and self.runtime is not None:
            self.sync(force=True)  # registered a moment ago, perhaps by another process
            spec = self._lookup(self._catalogue, name, version)
        if spec is None:
            if version is not None and name in self._catalogue.defaults:
                raise UnknownVersion(name, version)
            raise UnknownModel(name)
        return spec

    @staticmethod
    def _lookup(catalogue: _Catalogue, name: str, version: str | None) -> ModelSpec | None:
        version = catalogue.defaults.get(name) if version is None else version
        return catalogue.by_key.get((name, version))

    def serves(self, spec: ModelSpec) -> bool:
        """Whether `spec` is still what its name and version declare (not removed nor replaced)."""
        return self._current().by_key.get((spec.name, spec.version)) == spec

    def is_file_model(self, name: str) -> bool:
        return any(spec.name == name for spec in self.file_specs)

    def input_schema(self, name: str, version: str | None = None) -> Schema:
        spec = self.get(name, version)
        key = (spec.name, spec.version)
        schema = self._schemas.get(key)
        if schema is None or getattr(schema, "ferry_spec", None) is not spec:
            schema = self._schemas[key] = build_input_schema(spec)
            schema.ferry_spec = spec  # a runtime model re-registered under the same version gets a new schema
        return schema

    def metadata(self, spec: ModelSpec) -> dict:
        key = (spec.name, spec.version)
        if key not in self._metadata:
            self._metadata[key] = spec.metadata(self.root)
        return self._metadata[key]

    def pending_keys(self, store, queue: str) -> list[str]:
        """The pending lists of every model routed to `queue`: together, its depth."""
        return [store.pending_key(spec.name, spec.version) for spec in self.specs() if spec.queue == queue]

    @property
    def queues(self) -> set[str]:
        return set(self._current().queues)


def instantiate(spec: ModelSpec, root: Path = ROOT) -> Model:
    """Build the model a spec declares; only workers call this."""
    if spec.kind == "http":
        from models.remote import HttpModel

        model = HttpModel(spec.url, spec.timeout_s)
    elif spec.kind == "subprocess":
        from models.remote import SubprocessModel

        model = SubprocessModel(spec.command, root)
    else:
        module_name, _, class_name = spec.entrypoint.partition(":")
        model_class = getattr(importlib.import_module(module_name), class_name)
        model = model_class()
        if not isinstance(model, Model):
            raise TypeError(f"{spec.entrypoint} is not a models.base.Model subclass.")
    model.name, model.version = spec.name, spec.version
    return model
