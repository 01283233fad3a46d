"""The worker-side model pool: each process loads a model on first use, keeps the ones in
use and lets the others go, and runs forward passes in the right context (inference
mode, optional half precision).

Past `FERRY_POOL_MAX_MODELS` loaded models, or past `FERRY_POOL_MEMORY_MB` of them, the
least recently used ones are closed; so is any model idle for `FERRY_POOL_IDLE_S`. Each
process says what it holds in `{prefix}loaded:{model}` (a hash: "{worker}:{version}" ->
JSON with the device, since when, the memory and when it last ran), refreshed every
`heartbeat_s`, so that `GET /models/{name}` can tell where a model is loaded.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import logging
import os
import threading
import time

from models.base import predict_isolated
from models.declaration import ModelSpec
from models.registry import instantiate
from tasks.heartbeat import fresh_entries
from tasks.leases import worker_name
from tasks.per_process import OncePerProcess

log = logging.getLogger(__name__)
SETUP_RETRY_S = 10.0


def loaded_key(prefix: str, model: str) -> str:
    return f"{prefix}loaded:{model}"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


@dataclasses.dataclass
class Loaded:
    spec: ModelSpec
    model: object
    since: float
    last_used: float
    memory_bytes: int | None
    device: str
    # Forward passes running on it now: a model in use is never unloaded under them.
    in_use: int = 0


class ModelPool:
    def __init__(self, device: str = "cpu", *, max_models: int = 0, memory_mb: float = 0, idle_s: float = 0,
                 redis=None, prefix: str = "ferry:", report_s: float = 5.0, serves=None, torch_threads: int = 0):
        self.requested_device = device
        self.torch_threads = torch_threads
        self._device: str | None = None
        self.max_models, self.memory_mb, self.idle_s = max_models, memory_mb, idle_s
        self.redis, self.prefix, self.report_s = redis, prefix, report_s
        # Whether a loaded model's declaration is still served (runtime models come and go).
        self.serves = serves or (lambda spec: True)
        self._models: collections.OrderedDict[tuple[str, str], Loaded] = collections.OrderedDict()
        # Models being set up, each on a thread of its own: a task's time limit may end the
        # wait for one, never its setup, which the next task finds done or still going.
        self._loading: dict[tuple[str, str], tuple[ModelSpec, concurrent.futures.Future]] = {}
        # A setup that failed, given again for SETUP_RETRY_S rather than run again for each
        # batch (a missing weights file fails the same way, and a slow setup would make each
        # batch wait out its time limit before saying so).
        self._failed: dict[tuple[str, str], tuple[ModelSpec, BaseException, float]] = {}
        self._lock = threading.RLock()
        self._start_reporting = OncePerProcess(
            lambda: threading.Thread(target=self._report_forever, name="ferry-pool", daemon=True).start())

    @property
    def device(self) -> str:
        """The device models load onto, resolved on first use: torch (and CUDA) is touched
        only in the process that runs the models, never in a parent that forks."""
        if self._device is None:
            if self.requested_device == "cpu":
                self._device = "cpu"  # http and subprocess models never need torch
            else:
                from models.torch_runtime import resolve_device

                self._device = resolve_device(self.requested_device)
        return self._device

    def get(self, spec: ModelSpec):
        """The model, loaded on first use. Its setup runs on a thread of its own, so that a
        setup slower than the task's time limit still ends, for the tasks after it."""
        key = (spec.name, spec.version)
        while True:
            with self._lock:
                entry = self._models.get(key)
                if entry is not None and entry.spec != spec:  # re-registered with another declaration
                    self._evict(key, "its declaration changed")
                    entry = None
                if entry is not None:
                    entry.last_used = time.time()
                    self._models.move_to_end(key)
                    return entry.model
                failed = self._failed.get(key)
                if failed is not None and failed[0] == spec and time.monotonic() < failed[2]:
                    raise failed[1].with_traceback(None)  # not the frames of every earlier raise
                loading = self._loading.get(key)
                if loading is None or loading[0] != spec:
                    if spec.kind == "torch":
                        from models.torch_runtime import limit_threads

                        # Both are the calling thread's own: OpenMP's thread count, CUDA's
                        # current device (set where the device is first resolved). It predicts.
                        limit_threads(self.torch_threads)
                        self.device  # noqa: B018
                    loading = self._loading[key] = (spec, concurrent.futures.Future())
                    threading.Thread(target=self._load_into, args=(key, *loading), name=f"ferry-setup-{spec.name}",
                                     daemon=True).start()
            entry = loading[1].result()
            if entry is not None:
                return entry.model
            # Its declaration changed while it loaded: look again.

    def _load_into(self, key: tuple[str, str], spec: ModelSpec, done: concurrent.futures.Future) -> None:
        try:
            entry = self._load(spec)
        except BaseException as exc:  # the waiting task says why (if one still waits); the next tries again
            log.exception("model %s:%s: setup failed; tried again in %g s", *key, SETUP_RETRY_S)
            with self._lock:
                if self._loading.get(key, (None, None))[1] is done:
                    del self._loading[key]
                    self._failed[key] = (spec, exc, time.monotonic() + SETUP_RETRY_S)
            done.set_exception(exc)
            return
        with self._lock:
            current = self._loading.get(key, (None, None))[1] is done
            if current:
                del self._loading[key]
                self._failed.pop(key, None)
                self._models[key] = entry
                self._shrink(keep=key)
        if not current:  # replaced by a load of its new declaration
            with contextlib.suppress(Exception):
                entry.model.close()
            entry = None
        done.set_result(entry)

    def predict(self, spec: ModelSpec, inputs: list[dict], fatal: tuple = (),
                progress=None) -> list[tuple[str | None, str | None]]:
        """`models.base.predict_isolated` on the loaded model, in its inference context."""
        while True:  # loaded outside the lock, which its setup thread takes to add it
            model = self.get(spec)
            with self._lock:
                entry = self._models.get((spec.name, spec.version))
                if entry is not None and entry.model is model:
                    entry.in_use += 1
                    break
        try:
            with self._context(spec):
                return predict_isolated(model, inputs, fatal, progress)
        finally:
            with self._lock:
                entry.in_use -= 1
                entry.last_used = time.time()

    def _context(self, spec: ModelSpec):
        if spec.kind != "torch":
            return contextlib.nullcontext()
        from models.torch_runtime import inference_context

        return inference_context(self.device, spec.half_precision)

    def _load(self, spec: ModelSpec) -> Loaded:
        started = time.perf_counter()
        before = _rss_bytes()
        model = instantiate(spec)
        device = self.device if spec.kind == "torch" else "cpu"
        if spec.kind == "torch":
            from models.torch_runtime import on_device

            with on_device(device):
                model.setup(device)
        else:
            model.setup(device)
        own = model.memory_bytes()
        memory = own if own is not None else max(0, _rss_bytes() - before)
        now = time.time()
        log.info("loaded model %s:%s on %s in %.1fs (%.0f MB)", spec.name, spec.version, device,
                 time.perf_counter() - started, memory / 2**20)
        entry = Loaded(spec, model, since=now, last_used=now, memory_bytes=memory, device=device)
        if self.redis is not None:
            self._start_reporting()
        self._report(entry)
        return entry

    def _shrink(self, keep: tuple[str, str] | None = None) -> None:
        """Close least recently used models until the pool is within its count and memory."""
        while len(self._models) > 1:
            over_count = self.max_models and len(self._models) > self.max_models
            used_mb = sum(entry.memory_bytes or 0 for entry in self._models.values()) / 2**20
            over_memory = self.memory_mb and used_mb > self.memory_mb
            if not (over_count or over_memory):
                return
            oldest = next((key for key, entry in self._models.items() if key != keep and not entry.in_use), None)
            if oldest is None:
                return
            self._evict(oldest, f"over FERRY_POOL_MAX_MODELS={self.max_models}" if over_count
                        else f"over FERRY_POOL_MEMORY_MB={self.memory_mb:g} ({used_mb:.0f} MB loaded)")

    def evict_idle(self, now: float | None = None) -> list[tuple[str, str]]:
        if not self.idle_s:
            return []
        now = now or time.time()
        with self._lock:
            idle = [key for key, entry in self._models.items()
                    if not entry.in_use and now - entry.last_used >= self.idle_s]
            for key in idle:
                self._evict(key, f"idle for {self.idle_s:g} s")
        return idle

    def evict(self, name: str, version: str | None = None) -> None:
        with self._lock:
            for key in [key for key in self._models if key[0] == name and version in (None, key[1])]:
                self._evict(key, "removed")

    def _evict(self, key: tuple[str, str], why: str) -> None:
        entry = self._models.pop(key)
        try:
            entry.model.close()
        except Exception as exc:
            log.warning("model %s:%s did not close cleanly: %s", *key, exc)
        del entry
        gc.collect()
        if self._device and self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        log.info("unloaded model %s:%s (%s)", *key, why)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.hdel(loaded_key(self.prefix, key[0]), f"{worker_name()}:{key[1]}")

    def loaded(self) -> list[tuple[str, str]]:
        return list(self._models)

    def _report(self, entry: Loaded, pipe=None) -> None:
        if self.redis is None:
            return
        spec = entry.spec
        where = {"worker": worker_name(), "pid": os.getpid(), "version": spec.version, "device": entry.device,
                 "since": entry.since, "last_used": entry.last_used, "seen": time.time(),
                 "memory_mb": None if entry.memory_bytes is None else round(entry.memory_bytes / 2**20, 1)}
        (pipe or self.redis).hset(loaded_key(self.prefix, spec.name), f"{worker_name()}:{spec.version}",
                                  json.dumps(where))

    def report_all(self) -> None:
        """Refresh this process's entries (they go stale when it dies), and let idle and
        removed models go."""
        self.evict_idle()
        with self._lock:
            for key in [key for key, entry in self._models.items()
                        if not entry.in_use and not self.serves(entry.spec)]:
                self._evict(key, "no longer served")
            for entry in self._models.values():
                # What a model holds grows after setup (a subprocess model's child loading its weights).
                own = entry.model.memory_bytes()
                if own is not None:
                    entry.memory_bytes = own
            self._shrink()
            # Written under the lock: a model evicted meanwhile would be reported loaded again.
            if self._models and self.redis is not None:
                pipe = self.redis.pipeline(transaction=False)
                for entry in self._models.values():
                    self._report(entry, pipe)
                pipe.execute()

    def _report_forever(self) -> None:
        while True:
            time.sleep(self.report_s)
            try:
                self.report_all()
            except Exception as exc:  # Redis restarting: the next round tries again
                log.warning("could not report the loaded models: %s", exc)

    def close(self) -> None:
        with self._lock:
            for key in list(self._models):
                self._evict(key, "the worker stops")


def where_loaded(redis, prefix: str, model: str, max_age_s: float) -> list[dict]:
    """The worker processes holding `model` now, as they last reported; stale entries (a
    process that died) are dropped."""
    found = fresh_entries(redis, loaded_key(prefix, model), "seen", max_age_s, max_age_s)
    return sorted(found, key=lambda entry: (entry["version"], entry["worker"]))
