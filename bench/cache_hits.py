"""Cache hits: Ferry answering from its prediction cache beside a bare Flask endpoint that
does one Redis GET, both under `ferry api`'s gunicorn settings, with the same load (wrk).

    .venv-bench/bin/python -m bench.cache_hits [--seconds 10] [--clients 1,16]

Both get the same request (a `digits` input and an API key) and answer the same output;
Ferry checks the key and its rate limit, reads the cache, counts the input's popularity,
logs the request and counts it in its metrics. Every request repeats one body, as a popular
input does: each API process validates and hashes it once (through Flask), then answers it
beneath Flask (app/fast_path.py). Redis runs as in production (append-only, `appendfsync
always`). Besides throughput and latency, each row says what one answer cost: CPU in all the
server's processes, Redis commands, and bytes appended to the AOF (by the request's own
writes, which wait for an fsync, or by batched writes from background threads, which do
not); a busy machine distorts those less than it distorts throughput.
Target: Ferry's throughput at least 0.9 of the baseline's. Prints figures only.
"""
from __future__ import annotations

import argparse
import json

import redis

from bench.harness import api_key, cpu_seconds, ferry_settings, redis_counts, start_api, table, workspace, wrk
from models.cache import PredictionCache
from models.registry import Registry
from tasks.settings import Settings

PIXELS = [0, 0, 9, 16, 16, 10, 0, 0, 0, 0, 12, 8, 10, 15, 0, 0, 0, 0, 0, 0, 9, 14, 0, 0, 0, 0, 0, 14, 16, 7, 0, 0,
          0, 0, 0, 3, 11, 16, 3, 0, 0, 0, 0, 0, 0, 13, 9, 0, 0, 0, 8, 5, 7, 15, 8, 0, 0, 0, 11, 16, 16, 11, 1, 0]
BODY = json.dumps({"input": {"pixels": PIXELS}})


def digits_output() -> str:
    from models.base import encode_output
    from models.builtin.digits import DigitsModel

    model = DigitsModel()
    model.setup("cpu")
    return encode_output(model.predict([{"pixels": PIXELS}])[0])


def run(seconds: float, clients: list[int]) -> str:
    output = digits_output()
    rows = []
    with workspace(fsync="always") as (work, server, processes):
        client = redis.Redis.from_url(server.url, decode_responses=True)
        registry = Registry.from_file(Settings().model_repository)
        spec = registry.get("digits")
        # The key exactly as the API computes it, from the validated input.
        key = PredictionCache(client).key(spec.name, spec.version, registry.input_schema("digits").load({"pixels": PIXELS}))
        client.set(key, output)
        settings = ferry_settings(server, work, bench_key=key)
        ferry = start_api(processes, settings)
        bare = start_api(processes, ferry_settings(server, work, bench_key=key), "bench.bare_flask:create_app()",
                         name="bare")
        # Both get the same request bytes, the key included; the baseline ignores it.
        headers = api_key(server.url)
        procs = {"bare": processes.started[-1], "ferry": processes.started[-2]}
        urls = {"bare": f"{bare}/get", "ferry": f"{ferry}/models/digits/predictions"}

        def measured(which: str, n: int):
            """The load, and what each answer cost: CPU (all the server's processes) and
            Redis commands and fsyncs, which a busy machine does not distort."""
            before, redis_before = cpu_seconds(procs[which]), redis_state(server.url, client)
            load = wrk(urls[which], BODY, n, seconds, headers)
            cpu, redis_after = cpu_seconds(procs[which]) - before, redis_state(server.url, client)
            per = max(load.ok + load.not_200, 1)
            return load, cpu / per * 1e6, [(a - b) / per for a, b in zip(redis_after, redis_before)]

        for n in clients:
            wrk(urls["bare"], BODY, n, 2, headers)  # warm-up
            wrk(urls["ferry"], BODY, n, 2, headers)
            base = measured("bare", n)
            hit = measured("ferry", n)
            for name, (load, cpu_us, (commands, aof_bytes)) in (("bare Flask + one Redis GET", base),
                                                                 ("Ferry cache hit", hit)):
                rows.append([name, n, f"{load.rps:,.0f}", f"{load.p50_ms:.2f}", f"{load.p99_ms:.2f}",
                             f"{load.rps / base[0].rps:.2f}", f"{cpu_us:.0f}", f"{commands:.2f} / {aof_bytes:.0f}",
                             load.problems() or "-"])
    return table(["server", "clients", "req/s", "p50 ms", "p99 ms", "vs bare", "API CPU µs/req",
                  "Redis commands / AOF bytes per req", "errors"], rows)


def redis_state(url: str, client) -> tuple[int, int]:
    """Commands processed, and bytes appended to the append-only file: a request whose
    commands append anything waits for an fsync (`appendfsync always`) before its answer."""
    commands, _ = redis_counts(url)
    return commands, client.info("persistence").get("aof_current_size", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", default="1,16")
    args = parser.parse_args()
    print("\nCache hits (target: Ferry at least 0.9 of bare):")
    print(run(args.seconds, [int(c) for c in args.clients.split(",")]))


if __name__ == "__main__":
    main()
