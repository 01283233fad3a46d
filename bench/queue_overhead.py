"""Queue overhead: a model that does nothing, one client, `Prefer: wait`; HTTP to result.

    .venv-bench/bin/python -m bench.queue_overhead [--seconds 10]

A private redis-server, one worker process (`ferry worker --concurrency 1`) and the API
under `ferry api`'s gunicorn settings; one wrk connection sends distinct inputs (so none
is a cache hit), each answered 200 with its output. Prints median, p90 and p99 end to end,
and from the records, how long each waited for the worker and ran on it. Target: median
under 3 ms. Prints figures only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import redis
import yaml

from bench.harness import (api_key, cpu_seconds, ferry_settings, redis_counts, redis_round_trips, start_api,
                           start_worker, table, wait_ready, warm_up, workspace, wrk)

NOOP = {"name": "noop", "kind": "torch", "version": "1", "entrypoint": "bench.noop_model:Noop",
        "queue": "realtime-cpu", "batching": {"max_batch_size": 32, "max_wait_ms": 0},
        "inputs": {"x": {"type": "number", "required": True}}}


def stages(redis_url: str) -> tuple[float, float]:
    """Median ms from submit to the worker's start, and on the worker, over every record."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    queued, running = [], []
    for key in client.scan_iter("ferry:prediction:*", count=1000):
        record = client.hgetall(key)
        if record.get("finished_at"):
            queued.append((float(record["started_at"]) - float(record["queued_at"])) * 1000)
            running.append((float(record["finished_at"]) - float(record["started_at"])) * 1000)
    return statistics.median(queued), statistics.median(running)


def run(seconds: float, fsync: str = "always") -> str:
    with workspace(fsync=fsync) as (work, server, processes):
        repository = work / "repository.yaml"
        repository.write_text(yaml.safe_dump({"models": [NOOP]}))
        settings = ferry_settings(server, work, repository)
        worker = start_worker(processes, settings, "--device", "cpu", "--concurrency", "1")
        api = start_api(processes, settings)
        wait_ready(api, worker)
        headers = {**api_key(server.url), "Prefer": "wait=5"}
        url, body = f"{api}/models/noop/predictions", json.dumps({"input": {"x": 0}}).replace("0", "{n}")
        warm_up(url, body.replace("{n}", "-1"), headers)
        wrk(url, body, 1, 3, headers)  # warm-up: connections, caches
        groups = {"API": api_proc(processes), "worker": worker, "Redis": server.proc}
        # What the idle processes spend (heartbeats, polls) is measured first and taken off.
        idle, idle_s = costs(groups, server.url), 3.0
        time.sleep(idle_s)
        busy = costs(groups, server.url)
        load = wrk(url, body, 1, seconds, headers)
        done = costs(groups, server.url)
        n = max(load.ok, 1)
        spent = {name: ((done[name] - busy[name]) - (busy[name] - idle[name]) * load.seconds / idle_s) / n
                 for name in done}
        cpu = {name: spent[name] * 1000 for name in groups}
        commands, round_trips = spent["commands"], spent["round trips"]
        to_worker, on_worker = stages(server.url)
    return table(["requests", "median ms", "p90 ms", "p99 ms", "submit to worker ms", "on worker ms",
                  "CPU ms per request (API / worker / Redis)", "Redis commands / round trips per request", "errors"],
                 [[load.ok, f"{load.p50_ms:.2f}", f"{load.p90_ms:.2f}", f"{load.p99_ms:.2f}", f"{to_worker:.2f}",
                   f"{on_worker:.2f}", " / ".join(f"{cpu[name]:.2f}" for name in groups),
                   f"{commands:.1f} / {round_trips:.1f}", load.problems() or "-"]])


def costs(groups: dict, redis_url: str) -> dict:
    """CPU seconds of each process group, and Redis's commands and round trips, so far."""
    commands, _ = redis_counts(redis_url)
    return {**{name: cpu_seconds(proc) for name, proc in groups.items()},
            "commands": commands, "round trips": redis_round_trips(redis_url)}


def api_proc(processes):
    return next(proc for proc in processes.started if proc.args[-1] == "api")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--fsync", default="always",
                        help="Redis's appendfsync: always (production, the default), everysec, or a list "
                             "(always,everysec) to compare in one run")
    args = parser.parse_args()
    print("\nQueue overhead, noop model, 1 client, Prefer: wait (target: median under 3 ms):")
    for fsync in args.fsync.split(","):
        print(f"\nRedis appendfsync {fsync}:")
        print(run(args.seconds, fsync))


if __name__ == "__main__":
    main()
