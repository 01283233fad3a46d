"""Ferry's configuration, read in one place: defaults, then `FERRY_*` environment variables."""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "FERRY_"


@dataclasses.dataclass(frozen=True)
class Settings:
    # Empty means: the dev command starts an embedded redis-server and fills this in.
    redis_url: str = ""
    key_prefix: str = "ferry:"
    model_repository: str = str(ROOT / "models" / "repository.yaml")
    data_dir: str = str(ROOT / "var")
    # Bound on any request body; images are the largest legitimate input.
    max_content_length: int = 2 * 1024 * 1024
    # How long prediction records stay readable after they were submitted.
    prediction_ttl_s: int = 24 * 3600
    # Upper bound on `Prefer: wait=N`; a held request ties up an API thread.
    max_wait_s: float = 30.0
    # Backpressure: how many predictions may wait in one queue (the pending lists of the
    # models routed to it) before submissions are refused with 503 and Retry-After; 0: no
    # limit. `queue_limits` overrides it per queue: "realtime-gpu=200,realtime-cpu=5000".
    queue_limit: int = 1000
    queue_limits: str = ""
    # Requests per API process that may wait at once; past it, `Prefer: wait` gets 202 at once.
    max_waiters: int = 4
    # Event streams (GET /predictions/{id}/events) per API process: each holds a thread while
    # open. Past it, 503 and clients poll. Waiters plus streams stay below api_threads.
    max_event_streams: int = 8
    event_stream_max_s: float = 300.0
    # Comment lines this often keep proxies from closing a quiet stream.
    event_heartbeat_s: float = 10.0
    redis_timeout_s: float = 2.0
    retry_after_s: int = 5
    # Workers heartbeat at this interval; readiness trusts a beat twice as old.
    heartbeat_s: float = 5.0
    # A running batch leases its predictions (`ferry:claim:{id}`) for this long and renews the
    # lease every third of it; a dead worker's predictions lapse within one lease.
    claim_lease_s: float = 15.0
    # How often beat asks for predictions whose claim lapsed (their worker died) to be re-sent.
    sweep_s: float = 5.0
    # The broker re-delivers a message that a worker took but never acknowledged after this
    # long; it must exceed the longest hard time limit (see README, "Delivery").
    visibility_timeout_s: int = 300
    # cpu, cuda:N or auto: where a worker's models run (`ferry worker --device`).
    device: str = "cpu"
    worker_concurrency: int = 2
    # CPU threads a worker process gives a torch forward pass; 0 is torch's default, one per
    # core. `ferry worker` sets it to the cores divided among its processes: more threads
    # than cores, and torch's threads burn CPU spinning while they wait for each other.
    torch_threads: int = 0
    # Comma-separated queues that `ferry worker` consumes; empty means its device's queues.
    worker_queues: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = 2
    # Threads per API process: room for max_waiters + max_event_streams held requests and more.
    api_threads: int = 16
    flower_port: int = 5555
    flower_user: str = "ferry"
    flower_password: str = ""
    embedded_redis_port: int = 6390
    log_level: str = "info"
    # "text", or "json" for one JSON object per line; both carry request and prediction ids.
    log_format: str = "text"
    # Where the API's gunicorn processes keep their Prometheus values (emptied by `ferry api`
    # at start); one directory per API instance. Default: <data_dir>/api-metrics.
    metrics_dir: str = ""
    # Requests per API key (or per address without a valid key), flask-limiter's notation; health
    # probes and docs are never limited.
    rate_limit: str = "100/second;3000/minute"
    # How long an API process trusts an API key it has looked up; a revocation takes this long.
    key_cache_s: float = 5.0
    # Optional bootstrap API key with every scope, held only in the environment (app/keys.py);
    # other keys are made with `ferry keys create`.
    admin_key: str = ""
    # Batch precompute. The cache TTL outlives a day, so one missed night keeps yesterday's cache.
    batch_input_dir: str = ""
    batch_chunk_size: int = 500
    batch_cache_ttl_s: int = 3 * 24 * 3600
    batch_job_ttl_s: int = 7 * 24 * 3600
    # A running job whose chunks made no progress for this long is re-dispatched.
    batch_stale_s: float = 300.0
    batch_watchdog_s: float = 60.0
    nightly_jobs_file: str = str(ROOT / "batch_jobs" / "nightly.yaml")
    # How many distinct inputs per model the popularity count keeps.
    popular_max: int = 10_000
    # Inputs longer than this (canonical JSON) are not counted: images would bloat the set.
    popular_max_input_bytes: int = 4096
    # Runtime models (POST /models): the hosts their URLs may name, comma-separated `host` or
    # `host:port`, matched exactly; empty: registration is off.
    http_model_hosts: str = ""
    runtime_models_max: int = 100
    # How often a process looks for models registered or removed elsewhere (it always looks
    # at once when asked for a model it does not know).
    registry_refresh_s: float = 1.0
    # Each worker process's model pool: how many models it keeps loaded, how much memory they
    # may take (0: no limit) and how long an unused one stays (0: for ever).
    pool_max_models: int = 8
    pool_memory_mb: float = 0.0
    pool_idle_s: float = 3600.0
    # Recent requests kept per model for GET /models/{name}/logs.
    model_log_max: int = 200

    def __post_init__(self) -> None:
        # A value no process could work with fails at start, naming its variable, rather than
        # as a 500 (or a 503) on every request.
        for name, low in _AT_LEAST.items():
            if not getattr(self, name) >= low:  # NaN included
                raise ValueError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)!r}: must be at least {low}.")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"{ENV_PREFIX}LOG_FORMAT={self.log_format!r}: must be text or json.")
        self._queue_limits  # noqa: B018  (parsed, so checked, here)

    @functools.cached_property
    def _queue_limits(self) -> dict[str, int]:
        """FERRY_QUEUE_LIMITS by queue, parsed once: every submit asks for its queue's."""
        limits = {}
        for entry in filter(None, (part.strip() for part in self.queue_limits.split(","))):
            name, _, limit = entry.partition("=")
            if not name.strip() or not limit.strip().isdigit():
                raise ValueError(f"{ENV_PREFIX}QUEUE_LIMITS={self.queue_limits!r}: each entry is queue=N "
                                 f"(N a whole number, 0 for no limit), not {entry!r}.")
            limits[name.strip()] = int(limit)
        return limits

    @property
    def api_metrics_dir(self) -> Path:
        return Path(self.metrics_dir or Path(self.data_dir) / "api-metrics")

    def queue_limit_for(self, queue: str) -> int:
        return self._queue_limits.get(queue, self.queue_limit)

    @property
    def batch_inputs(self) -> Path:
        return Path(self.batch_input_dir or Path(self.data_dir) / "batch-inputs")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _coerce(field, raw)
        values.update(overrides)
        return cls(**values)


# The least each number may be: 0 where 0 means "none" or "no limit", more where 0 would stop
# every request (a TTL of 0, no threads, a timeout of 0).
_AT_LEAST = {
    "max_content_length": 1, "prediction_ttl_s": 1, "max_wait_s": 0, "queue_limit": 0, "max_waiters": 0,
    "max_event_streams": 0, "event_stream_max_s": 0.001, "event_heartbeat_s": 0.001, "redis_timeout_s": 0.001,
    "retry_after_s": 1, "heartbeat_s": 0.001, "claim_lease_s": 0.001, "sweep_s": 0.001, "visibility_timeout_s": 1,
    "worker_concurrency": 1, "torch_threads": 0, "api_port": 1, "api_workers": 1, "api_threads": 1,
    "flower_port": 1, "embedded_redis_port": 1, "key_cache_s": 0, "batch_chunk_size": 1,
    "batch_cache_ttl_s": 60, "batch_job_ttl_s": 60, "batch_stale_s": 0, "batch_watchdog_s": 0.001, "popular_max": 1,
    "popular_max_input_bytes": 1, "runtime_models_max": 0, "registry_refresh_s": 0, "pool_max_models": 0,
    "pool_memory_mb": 0, "pool_idle_s": 0, "model_log_max": 0,
}


def _coerce(field: dataclasses.Field, raw: str):
    kind = type(field.default)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{field.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
