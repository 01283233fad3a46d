"""Real-time `minilm` through Ferry, with dynamic batching on and off, beside the model's
in-process batched throughput (the limit) and LitServe serving the same model code with
the same maximum batch size and wait; one load generator (wrk) for every HTTP row.

    .venv-bench/bin/python -m bench.realtime [--seconds 10] [--clients 1,8,32,64]

Every request carries a distinct sentence, so Ferry's cache never answers. Ferry runs one
worker process (`ferry worker --concurrency 1`) and its API under `ferry api`'s gunicorn
settings with enough threads and `FERRY_MAX_WAITERS` for every client to hold a
`Prefer: wait`; clients send `Prefer: wait=60` and count only 200 answers. Targets at 32
clients: at least 0.7 of the limit, and ahead of LitServe. Prints figures only.
"""
from __future__ import annotations

import argparse
import json
import time

import yaml

from bench.harness import (BIN, ROOT, api_key, ferry_settings, free_port, http_ok, start_api, start_worker, table, wait_for,
                           wait_ready, warm_up, workspace, wrk)
from tests.processes import ferry_env

MAX_BATCH_SIZE, MAX_WAIT_MS = 32, 10
# Every request the same length: words from a fixed sentence, then a unique tag.
SENTENCE = "Ferry carries each request across the river to a worker that runs the model and back again"
THREADS = 64


def body(tag: str) -> str:
    return json.dumps({"input": {"text": f"{SENTENCE} {tag}-{{n}}"}})


def in_process(seconds: float) -> float:
    """Inputs per second of the model alone, in batches of MAX_BATCH_SIZE."""
    from models.builtin.minilm import MiniLMModel

    model = MiniLMModel()
    model.setup("cpu")
    batch = lambda i: [{"text": f"{SENTENCE} limit-{i}-{j}", "normalize": True} for j in range(MAX_BATCH_SIZE)]  # noqa: E731
    model.predict(batch(-1))
    done, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        model.predict(batch(i))
        done += MAX_BATCH_SIZE
        i += 1
    return done / (time.perf_counter() - started)


def repository(path, max_batch_size: int, max_wait_ms: int):
    document = yaml.safe_load((ROOT / "models" / "repository.yaml").read_text())
    document["models"] = [m for m in document["models"] if m["name"] == "minilm"]
    document["models"][0]["batching"] = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
    path.write_text(yaml.safe_dump(document))
    return path


def loads(url: str, clients: list[int], seconds: float, tag: str, headers: dict) -> list:
    results = []
    for n in [max(clients), *clients]:  # the first, unrecorded, warms up
        # Requests that wrk left unanswered at the end of the last load are still queued on
        # the server: one request answered (first in, first out) means they are gone.
        warm_up(url, body(f"{tag}-drain-{n}").replace("{n}", str(len(results))), headers)
        results.append(wrk(url, body(f"{tag}-{n}-{len(results)}"), n, seconds if results else 3, headers))
    return results[1:]


def run(seconds: float, clients: list[int]) -> str:
    limit = in_process(seconds)
    results = []
    with workspace() as (work, server, processes):
        for batching, (size, wait) in (("on", (MAX_BATCH_SIZE, MAX_WAIT_MS)), ("off", (1, 0))):
            settings = ferry_settings(server, work, repository(work / f"repository-{batching}.yaml", size, wait),
                                      api_threads=THREADS, max_waiters=THREADS)
            worker = start_worker(processes, settings, "--device", "cpu", "--concurrency", "1")
            api = start_api(processes, settings)
            wait_ready(api, worker)
            label = f"on ({size}, {wait} ms)" if batching == "on" else "off"
            headers = {**api_key(server.url), "Prefer": "wait=60"}
            for load in loads(f"{api}/models/minilm/predictions", clients, seconds, batching, headers):
                results.append(("Ferry", label, load))
            processes.stop()
        port = free_port()
        peer = processes.start("litserve", [str(BIN / "python"), "-m", "bench.litserve_minilm", str(port),
                                            str(MAX_BATCH_SIZE), str(MAX_WAIT_MS)], {**ferry_env(), "PYTHONPATH": str(ROOT)})
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 120, "LitServe", peer)
        for load in loads(f"http://127.0.0.1:{port}/predict", clients, seconds, "litserve", {}):
            results.append(("LitServe", f"on ({MAX_BATCH_SIZE}, {MAX_WAIT_MS} ms)", load))
    rows = [["in-process (the limit)", f"batches of {MAX_BATCH_SIZE}", "-", f"{limit:,.0f}", "-", "-", "1.00", "-"]]
    for name, label, load in results:
        rows.append([name, label, load.clients, f"{load.rps:,.0f}", f"{load.p50_ms:.1f}", f"{load.p99_ms:.1f}",
                     f"{load.rps / limit:.2f}", load.problems() or "-"])
    return table(["server", "batching", "clients", "req/s", "p50 ms", "p99 ms", "vs limit", "errors"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", default="1,8,32,64")
    args = parser.parse_args()
    print("\nminilm, real time (targets at 32 clients: Ferry at least 0.7 of the limit, and ahead of LitServe):")
    print(run(args.seconds, [int(c) for c in args.clients.split(",")]))


if __name__ == "__main__":
    main()
