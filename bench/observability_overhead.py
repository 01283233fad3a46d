"""What metrics, request ids and logging cost the API per request, on its fastest path.

    .venv/bin/python bench/observability_overhead.py [--requests 3000] [--rounds 5]

Starts a private redis-server and builds the API in this process (Flask's test client, no
HTTP server, so the API's own CPU time is what is measured), then times cache-hit submits,
the path with the least other work, twice per round: as shipped, and with the request
hooks of `app.metrics` and `app.request_ids` removed and the submit counters replaced by
no-ops (the baseline). Rounds alternate the two, so a busy machine slows both alike.
Prints the median CPU time per request of each (the thread's, so that waits on Redis,
which vary far more on a shared machine, stay out) and the difference.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from app import create_app, metrics, request_ids  # noqa: E402
from models.base import encode_output  # noqa: E402
from tests.processes import RedisServer  # noqa: E402

PIXELS = [float(i % 17) for i in range(64)]
OBSERVING_HOOKS = {metrics._started, metrics._answered, request_ids._assign, request_ids._echo, request_ids._forget}


class _NoCounter:
    def labels(self, *args):
        return self

    def inc(self, amount=1):
        pass


def build(redis_url: str, bare: bool):
    app = create_app({"redis_url": redis_url, "rate_limit": "1000000/second", "log_level": "warning"})
    if bare:
        for table in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
            table[None] = [hook for hook in table.get(None, []) if hook not in OBSERVING_HOOKS]
    token, _ = app.extensions["ferry"].keys.create("bench", ["predict"])
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return app, client


def time_requests(client, count: int, bare: bool) -> float:
    """Median CPU microseconds of this thread per cache-hit submit: the API's own work,
    without the waits on Redis, which on a shared machine vary far more than the hooks cost."""
    saved = (metrics.CACHE_HITS, metrics.CACHE_MISSES, metrics.SUBMITTED)
    if bare:
        metrics.CACHE_HITS = metrics.CACHE_MISSES = metrics.SUBMITTED = _NoCounter()
    try:
        samples = []
        for _ in range(count):
            started = time.thread_time()
            response = client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}})
            samples.append((time.thread_time() - started) * 1e6)
            assert response.status_code == 200, response.get_data(as_text=True)
        return statistics.median(samples)
    finally:
        metrics.CACHE_HITS, metrics.CACHE_MISSES, metrics.SUBMITTED = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="ferry-bench-")) / "redis").start()
    try:
        shipped_app, shipped = build(server.url, bare=False)
        _, bare = build(server.url, bare=True)
        ferry = shipped_app.extensions["ferry"]
        validated = ferry.registry.input_schema("digits").load({"pixels": PIXELS})
        ferry.cache.set(ferry.cache.key("digits", "1.0.0", validated), encode_output({"label": 1}), ttl_s=3600)
        time_requests(shipped, 300, bare=False)  # warm up both
        time_requests(bare, 300, bare=True)
        with_hooks, without = [], []
        for _ in range(args.rounds):
            with_hooks.append(time_requests(shipped, args.requests, bare=False))
            without.append(time_requests(bare, args.requests, bare=True))
        a, b = statistics.median(with_hooks), statistics.median(without)
        print(f"cache-hit submit, CPU time of the API thread, median of {args.rounds} rounds x {args.requests} "
              "requests (in process):")
        print(f"  {'baseline (no metrics, no request ids)':<42} {b:8.1f} us/request")
        print(f"  {'as shipped':<42} {a:8.1f} us/request")
        print(f"  {'difference':<42} {a - b:8.1f} us/request ({(a - b) / b:+.1%})")
    finally:
        redis.Redis.from_url(server.url).close()
        server.stop()


if __name__ == "__main__":
    main()
