"""Each model's recent requests, newest first and bounded, for `GET /models/{name}/logs`.

    {prefix}model-log:{model}   list of JSON entries, newest first, trimmed to `max_entries`

A request is logged when it is answered: by the worker when its prediction finishes, in
the pipeline that records the outcome, and by the API when the cache answers it. The API
keeps those entries a moment and writes them together (`later`), so that a cache hit
stays one read: at most `flush_s` of hits is lost if the process dies.
"""
from __future__ import annotations

import json
import threading
import time

from tasks.flushing import PeriodicFlush


class RequestLog:
    def __init__(self, redis, prefix: str = "ferry:", max_entries: int = 200, flush_s: float = 0.5):
        self.redis = redis
        self.prefix = prefix
        self.max_entries = max_entries
        self._waiting: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._flusher = PeriodicFlush(self._write_waiting, flush_s, "request log entries")

    def key(self, model: str) -> str:
        return f"{self.prefix}model-log:{model}"

    def add(self, pipe, model: str, **entry) -> None:
        """Queue the entry's write on `pipe`."""
        if self.max_entries > 0:
            self._write(pipe, model, [_entry(**entry)])

    def later(self, model: str, **entry) -> None:
        """Write the entry with the others of the next `flush_s`, from a background thread."""
        if self.max_entries <= 0:
            return
        with self._lock:
            self._waiting.append((model, _entry(**entry)))
        self._flusher.ensure_running()

    def flush(self) -> None:
        self._flusher.flush()

    def _write_waiting(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        by_model: dict[str, list[dict]] = {}
        for model, entry in waiting:
            by_model.setdefault(model, []).append(entry)
        pipe = self.redis.pipeline(transaction=False)
        for model, entries in by_model.items():
            self._write(pipe, model, entries)
        pipe.execute()

    def _write(self, pipe, model: str, entries: list[dict]) -> None:
        pipe.lpush(self.key(model), *(json.dumps(entry, separators=(",", ":")) for entry in entries))
        pipe.ltrim(self.key(model), 0, self.max_entries - 1)

    def finished(self, pipe, record: dict, status: str, finished_at: float, started_at: float | None = None) -> None:
        """A prediction's outcome, from its record as the worker holds it."""
        queued_at = float(record["queued_at"])
        self.add(pipe, record["model"], version=record["version"], status=status, cache_hit=False,
                 prediction_id=record["id"], request_id=record.get("request_id"), at=queued_at,
                 queue_ms=None if started_at is None else (started_at - queued_at) * 1000,
                 run_ms=None if started_at is None else (finished_at - started_at) * 1000,
                 total_ms=(finished_at - queued_at) * 1000)

    def recent(self, model: str, limit: int) -> list[dict]:
        return [json.loads(raw) for raw in self.redis.lrange(self.key(model), 0, limit - 1)]

    def clear(self, model: str) -> int:
        return int(self.redis.delete(self.key(model)))


def _entry(*, version: str, status: str, cache_hit: bool, prediction_id: str | None = None,
           request_id: str | None = None, at: float | None = None, **durations_ms: float | None) -> dict:
    return {"prediction_id": prediction_id, "request_id": request_id or None, "time": at or time.time(),
            "version": version, "status": status, "cache_hit": cache_hit,
            "durations_ms": {name: None if value is None else round(value, 3) for name, value in durations_ms.items()}}
