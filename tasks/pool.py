"""The worker-side model pool: each process loads a model on first use and keeps it, and
runs its forward passes in the right context (inference mode, optional half precision)."""
from __future__ import annotations

import contextlib
import logging
import threading
import time

from models.base import predict_isolated
from models.declaration import ModelSpec
from models.registry import instantiate

log = logging.getLogger(__name__)


class ModelPool:
    def __init__(self, device: str = "cpu"):
        self.requested_device = device
        self._device: str | None = None
        self._models: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        """The device models load onto, resolved on first use: torch (and CUDA) is touched
        only in the process that runs the models, never in a parent that forks."""
        if self._device is None:
            from models.torch_runtime import resolve_device

            self._device = resolve_device(self.requested_device)
        return self._device

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

    def predict(self, spec: ModelSpec, inputs: list[dict], fatal: tuple = (),
                progress=None) -> list[tuple[str | None, str | None]]:
        """`models.base.predict_isolated` on the loaded model, in its inference context."""
        model = self.get(spec)
        with self._context(spec):
            return predict_isolated(model, inputs, fatal, progress)

    def _context(self, spec: ModelSpec):
        if spec.kind != "torch":
            return contextlib.nullcontext()
        from models.torch_runtime import inference_context

        return inference_context(self.device, spec.half_precision)

    def _load(self, spec: ModelSpec):
        started = time.perf_counter()
        model = instantiate(spec)
        device = self.device
        model.setup(device)
        log.info("loaded model %s:%s on %s in %.1fs", spec.name, spec.version, device, time.perf_counter() - started)
        return model

    def loaded(self) -> list[tuple[str, str]]:
        return list(self._models)
