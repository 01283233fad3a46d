"""Cache hits: Ferry answering from its prediction cache beside a bare Flask endpoint that
does one Redis GET, both under `ferry api`'s gunicorn settings, with the same load (wrk).

    .venv-bench/bin/python -m bench.cache_hits [--seconds 10] [--clients 1,16]

Both get the same request (a `digits` input and an API key) and answer the same output;
Ferry checks the key, validates the input, hashes it, reads the cache and counts the
input's popularity. Target: Ferry's throughput at least 0.9 of the baseline's. Prints figures only.
"""
from __future__ import annotations

import argparse
import json

import redis

from bench.harness import api_key, ferry_settings, start_api, table, workspace, wrk
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
    with workspace() as (work, server, processes):
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
        for n in clients:
            wrk(f"{bare}/get", BODY, n, 2, headers)  # warm-up
            wrk(f"{ferry}/models/digits/predictions", BODY, n, 2, headers)
            base = wrk(f"{bare}/get", BODY, n, seconds, headers)
            hit = wrk(f"{ferry}/models/digits/predictions", BODY, n, seconds, headers)
            for name, load in (("bare Flask + one Redis GET", base), ("Ferry cache hit", hit)):
                rows.append([name, n, f"{load.rps:,.0f}", f"{load.p50_ms:.2f}", f"{load.p99_ms:.2f}",
                             f"{load.rps / base.rps:.2f}", load.problems() or "-"])
    return table(["server", "clients", "req/s", "p50 ms", "p99 ms", "vs bare", "errors"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", default="1,16")
    args = parser.parse_args()
    print("\nCache hits (target: Ferry at least 0.9 of bare):")
    print(run(args.seconds, [int(c) for c in args.clients.split(",")]))


if __name__ == "__main__":
    main()
