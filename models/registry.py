"""The registry: what models exist (for everyone) and how to build one (for workers)."""
from __future__ import annotations

import importlib
from functools import cached_property
from pathlib import Path

from marshmallow import Schema

from models.base import Model
from models.declaration import ModelSpec, load_repository
from models.schemas import build_input_schema

ROOT = Path(__file__).resolve().parent.parent


class UnknownModel(KeyError):
    pass


class Registry:
    def __init__(self, specs: list[ModelSpec], root: Path = ROOT):
        self._specs = {spec.name: spec for spec in specs}
        self._schemas: dict[str, Schema] = {}
        self._metadata: dict[str, dict] = {}
        self.root = root

    @classmethod
    def from_file(cls, path: str | Path) -> "Registry":
        return cls(load_repository(path))

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ModelSpec]:
        return [self._specs[name] for name in self.names()]

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownModel(name) from None

    def input_schema(self, name: str) -> Schema:
        if name not in self._schemas:
            self._schemas[name] = build_input_schema(self.get(name))
        return self._schemas[name]

    def metadata(self, name: str) -> dict:
        if name not in self._metadata:
            self._metadata[name] = self.get(name).metadata(self.root)
        return self._metadata[name]

    def pending_keys(self, store, queue: str) -> list[str]:
        """The pending lists of every model routed to `queue`: together, its depth."""
        return [store.pending_key(spec.name, spec.version) for spec in self._specs.values() if spec.queue == queue]

    @cached_property
    def queues(self) -> set[str]:
        return {spec.queue for spec in self._specs.values()}


def instantiate(spec: ModelSpec) -> Model:
    """Import the declared class and build the model; only workers call this."""
    module_name, _, class_name = spec.entrypoint.partition(":")
    model_class = getattr(importlib.import_module(module_name), class_name)
    model = model_class()
    if not isinstance(model, Model):
        raise TypeError(f"{spec.entrypoint} is not a models.base.Model subclass.")
    model.name, model.version = spec.name, spec.version
    return model
