"""Nightly precompute through the whole path, beside the model's in-process batched throughput.

    .venv/bin/python bench/batch_precompute.py [--minilm 5000] [--digits 50000]

Starts a private redis-server and one batch worker with a process per core, each giving a
forward pass one torch thread (as `ferry worker --concurrency <cores>` sets it; the
in-process baseline has torch's default, a thread per core); the model is loaded on it
before timing, as the baseline excludes loading too. Writes the inputs as JSONL, runs
`ferry batch`'s path (plan in this process, chunks on the worker, pipelined cache writes)
and prints inputs/s for both and the ratio.
Also runs the same job as a script without Ferry would (one process: read, validate, predict,
write the cache), for what Ferry costs beyond the work itself.
Target: at least 0.9 of in-process. Prints figures only; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402

from batch_jobs import runner  # noqa: E402
from models.base import encode_output  # noqa: E402
from models.cache import input_digest  # noqa: E402
from models.registry import Registry, instantiate  # noqa: E402
from tasks.celery_app import create_celery  # noqa: E402
from tasks.context import WorkerContext  # noqa: E402
from tasks.heartbeat import live_queues  # noqa: E402
from tasks.senders import CelerySender  # noqa: E402
from tasks.settings import Settings  # noqa: E402
from bench.harness import cpu_seconds  # noqa: E402
from tests.processes import RedisServer, start_worker, stop_group, wait_for  # noqa: E402

WORDS = ("ferry river model server queue worker cache night batch input output fast small large "
         "green blue music guitar password report weather city train ocean mountain book").split()


def minilm_inputs(n: int, rng: random.Random) -> list[dict]:
    return [{"text": f"{' '.join(rng.choices(WORDS, k=rng.randint(5, 14)))} #{i}", "normalize": True}
            for i in range(n)]


def digits_inputs(n: int, rng: np.random.Generator) -> list[dict]:
    from sklearn.datasets import load_digits

    base = load_digits().data
    picks = base[rng.integers(0, len(base), n)] + rng.integers(-1, 2, (n, 64))
    return [{"pixels": [float(v) for v in row]} for row in np.clip(picks, 0, 16)]


def in_process(model, inputs: list[dict], batch_size: int) -> tuple[float, float]:
    """Inputs per second, and CPU seconds per input (all of this process's threads). The
    collector is paused, as Ferry's chunks pause it, so neither side pays for it."""
    model.predict(inputs[:batch_size])  # warm-up, as the worker's first chunk also pays it
    started, cpu = time.perf_counter(), time.process_time()
    with runner.paused_gc():
        for start in range(0, len(inputs), batch_size):
            model.predict(inputs[start:start + batch_size])
    return len(inputs) / (time.perf_counter() - started), (time.process_time() - cpu) / len(inputs)


def one_process_script(model, schema, path: Path, batch_size: int, cache, redis_server) -> tuple[float, float]:
    """What a script without Ferry does for the same job, in one process: read each line,
    validate it, digest it, predict in batches, write one cache entry each. Inputs per
    second, and CPU seconds per input of this process and Redis together."""
    lines = path.read_bytes().splitlines()
    key_prefix = cache.key_prefix("bench-script", "1")
    started, cpu, redis_cpu = time.perf_counter(), time.process_time(), cpu_seconds(redis_server.proc)
    with runner.paused_gc():
        for start in range(0, len(lines), batch_size):
            valid = [schema.load_fast(orjson.loads(line)) for line in lines[start:start + batch_size]]
            outputs = [encode_output(output) for output in model.predict(valid)]
            cache.set_many([key_prefix + input_digest(item) for item in valid], outputs, 3600)
    used = time.process_time() - cpu + cpu_seconds(redis_server.proc) - redis_cpu
    return len(lines) / (time.perf_counter() - started), used / len(lines)


def through_ferry(ctx, sender, model: str, path: Path, chunk_size: int, batch_size: int,
                  worker, redis_server) -> tuple[float, dict, dict]:
    """Inputs per second, the job's progress, and CPU seconds per input of each process:
    the planner (this one), the worker and Redis. CPU time, unlike the rate, is much the
    same on a busy machine as on a quiet one."""
    cpu = {"planner": time.process_time(), "worker": cpu_seconds(worker), "redis": cpu_seconds(redis_server.proc)}
    started = time.time()
    job = runner.create_job(ctx, model=model, source={"type": "jsonl", "path": str(path)}, chunk_size=chunk_size,
                            batch_size=batch_size, origin="bench", confined=False)
    runner.plan_job(job["id"], ctx, sender.send_chunk)
    planned = time.process_time()
    store = runner.job_store(ctx)
    wait_for(lambda: store.get(job["id"])["status"] in ("succeeded", "failed", "canceled"), 3600, "batch job")
    # Until the worker recorded the last chunk, not until this loop noticed (it looks every 0.1 s).
    finished = store.get(job["id"])
    elapsed = float(finished["finished_at"]) - started
    progress = store.progress(finished)
    done = max(progress["done"], 1)
    used = {"planner": (planned - cpu["planner"]) / done,
            "worker": (cpu_seconds(worker) - cpu["worker"]) / done,
            "redis": (cpu_seconds(redis_server.proc) - cpu["redis"]) / done}
    return progress["done"] / elapsed, progress, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", type=int, default=5000)
    parser.add_argument("--digits", type=int, default=50000)
    # Eight batches a chunk: for a cheap model a task's own cost (its message, a dozen Redis
    # round trips) is otherwise a sizeable share of a chunk's (digits on a 2-core machine:
    # 0.27 of the baseline with chunks of 1000, 0.40 with 4096 and the planner's ramp-up).
    parser.add_argument("--chunk-size", type=int, default=None, help="default: 8 batches")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    server = RedisServer(work / "redis").start()
    settings = Settings(redis_url=server.url, data_dir=str(work))
    client = redis.Redis.from_url(server.url, decode_responses=True)
    ctx = WorkerContext.build(settings, client)
    sender = CelerySender(create_celery(settings))
    cores = os.cpu_count() or 1
    worker = start_worker(server.url, work / "worker.log", queues="batch", concurrency=cores, data_dir=work,
                          torch_threads=1)
    rows = []
    try:
        wait_for(lambda: "batch" in live_queues(client, "ferry:", 10), 60, "batch worker", worker)
        registry = Registry.from_file(settings.model_repository)
        cases = [("minilm", minilm_inputs(args.minilm, random.Random(1)), 64),
                 ("digits", digits_inputs(args.digits, np.random.default_rng(1)), 512)]
        for name, inputs, batch_size in cases:
            if not inputs:
                continue
            path = work / f"{name}.jsonl"
            path.write_text("".join(json.dumps(item) + "\n" for item in inputs))
            # Workers are long-lived: load the model on the worker before timing, as the
            # in-process baseline also excludes loading.
            warm = work / f"{name}-warm.jsonl"
            warm.write_text("".join(json.dumps(item) + "\n" for item in inputs[-batch_size:]))
            chunk_size = args.chunk_size or 8 * batch_size
            through_ferry(ctx, sender, name, warm, chunk_size, batch_size, worker, server)
            model = instantiate(registry.get(name))
            model.setup("cpu")
            baseline, baseline_cpu = in_process(model, inputs, batch_size)
            script, script_cpu = one_process_script(model, registry.input_schema(name),
                                                    path, batch_size, ctx.cache, server)
            ferry, progress, used = through_ferry(ctx, sender, name, path, chunk_size, batch_size, worker, server)
            rows.append((name, len(inputs), batch_size, baseline, script, ferry, progress, baseline_cpu, script_cpu,
                         used))
    finally:
        stop_group(worker)
        server.stop()

    print("\nin-process: the model's predict alone; script: one process reading, validating, predicting "
          "and writing the cache, without Ferry")
    print(f"{'model':<8} {'inputs':>7} {'batch':>6} {'in-process/s':>13} {'script/s':>9} {'ferry/s':>9} {'ratio':>6} "
          f"{'vs script':>9}  cached")
    for name, n, batch_size, baseline, script, ferry, progress, *_ in rows:
        print(f"{name:<8} {n:>7} {batch_size:>6} {baseline:>13.0f} {script:>9.0f} {ferry:>9.0f} {ferry / baseline:>6.2f} "
              f"{ferry / script:>9.2f}  {progress['done']}/{progress['valid']}")
    print(f"\nCPU µs per input: {'in-process':>10} {'script':>7} {'planner':>8} {'worker':>7} {'redis':>6} "
          f"{'ferry total':>11}")
    for name, *_, baseline_cpu, script_cpu, used in rows:
        print(f"{name:<17} {baseline_cpu * 1e6:>10.1f} {script_cpu * 1e6:>7.1f} {used['planner'] * 1e6:>8.1f} "
              f"{used['worker'] * 1e6:>7.1f} {used['redis'] * 1e6:>6.1f} {sum(used.values()) * 1e6:>11.1f}")


if __name__ == "__main__":
    main()
