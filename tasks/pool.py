"""The worker-side model pool: each process loads a model on first use and keeps it."""
from __future__ import annotations

import logging
import threading
import time

from models.declaration import ModelSpec
from models.registry import instantiate

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    """`auto` picks the first GPU when there is one; anything else is taken as given."""
    if requested != "auto":
        return requested
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class ModelPool:
    def __init__(self, device: str = "cpu"):
        self.device = device
        self._models: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec):
        key = (spec.name, spec.version)
        model = self._models.get(key)
        if model is None:
            with self._lock:
                model = self._models.get(key)
                if model is None:
                    model = self._load(spec)
                    self._models[key] = model
        return model

    def _load(self, spec: ModelSpec):
        started = time.perf_counter()
        model = instantiate(spec)
        device = resolve_device(self.device)
        model.setup(device)
        log.info("loaded model %s:%s on %s in %.1fs", spec.name, spec.version, device, time.perf_counter() - started)
        return model

    def loaded(self) -> list[tuple[str, str]]:
        return list(self._models)
