"""Queue overhead: one client, `Prefer: wait`, a model that does nothing; HTTP to result.

    .venv/bin/python bench/queue_overhead.py [--requests 500]

Starts a private redis-server, one worker process and the API under gunicorn (the
settings `ferry api` uses), sends distinct inputs one at a time (so none is a cache hit)
and prints median, p90 and p99 end-to-end latency. Target: median under 3 ms.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402
import yaml  # noqa: E402

from tests.processes import BIN, ROOT, RedisServer, ferry_env, free_port, start_worker, stop_group, wait_for  # noqa: E402

NOOP = {"name": "noop", "kind": "torch", "version": "1", "entrypoint": "bench.noop_model:Noop",
        "queue": "realtime-cpu", "batching": {"max_batch_size": 32, "max_wait_ms": 0},
        "inputs": {"x": {"type": "number", "required": True}}}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--pool", default="prefork", help="The worker's Celery pool: prefork, solo or threads.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    repository = work / "repository.yaml"
    repository.write_text(yaml.safe_dump({"models": [NOOP]}))
    server = RedisServer(work / "redis").start()
    port = free_port()
    settings = {"redis_url": server.url, "model_repository": repository, "data_dir": work, "api_port": port}
    worker = start_worker(server.url, work / "worker.log", concurrency=1, pool=args.pool,
                          model_repository=repository, data_dir=work)
    api = subprocess.Popen([str(BIN / "ferry"), "api"], cwd=ROOT, env=ferry_env(**settings),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    latencies, queue_ms, run_ms = [], [], []
    try:
        wait_for(lambda: requests.get(f"{base}/health/ready", timeout=2).status_code == 200, 60, "api and worker")
        session = requests.Session()
        url = f"{base}/models/noop/predictions"
        for i in range(-50, args.requests):  # the first 50 warm up connections and the worker
            started = time.perf_counter()
            response = session.post(url, json={"input": {"x": float(i)}}, headers={"Prefer": "wait=5"})
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.text
            if i >= 0:
                latencies.append(elapsed)
                queue_ms.append(response.json()["timings"]["queue_ms"])
                run_ms.append(response.json()["timings"]["run_ms"])
    finally:
        stop_group(api)
        stop_group(worker)
        server.stop()
    print(f"\nqueue overhead, noop model, 1 client, Prefer: wait, {len(latencies)} requests, {args.pool} pool")
    print(f"median {statistics.median(latencies):.2f} ms   p90 {percentile(latencies, 90):.2f} ms   "
          f"p99 {percentile(latencies, 99):.2f} ms   (target: median under 3 ms)")
    print(f"of which, medians: submit to worker start {statistics.median(queue_ms):.2f} ms, "
          f"on the worker {statistics.median(run_ms):.2f} ms, the rest is the API and the wait")


if __name__ == "__main__":
    main()
