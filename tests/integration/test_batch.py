"""Batch precompute with a real Redis and real worker processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import redis

from app import create_app
from batch_jobs import runner
from tasks.celery_app import create_celery
from tasks.context import WorkerContext
from tasks.senders import CelerySender
from tasks.settings import Settings
from tests.auth import keyed_client
from tests.integration.conftest import ADMIN_KEY, run_worker
from tests.processes import BIN, ROOT, RedisServer, ferry_env, stop_group, wait_for
from tests.support import test_split

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def write_jsonl(path, rows) -> None:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))


def wait_job(client, job_id: str, until=lambda job: job["status"] in ("succeeded", "failed", "canceled"),
             timeout_s: float = 120) -> dict:
    return wait_for(lambda: (lambda job: job if until(job) else None)(
        client.get(f"/batch-jobs/{job_id}", headers=ADMIN).json), timeout_s, f"batch job {job_id}")


def test_jsonl_job_with_invalid_lines(live_client, batch_worker, data_dir):
    x_test, y_test = test_split()
    rows = [{"pixels": [float(v) for v in x_test[i]]} for i in range(150)]
    rows[10:10] = ["{broken", {"pixels": [99] * 64}, {"text": "wrong model"}]  # lines 11, 12, 13
    write_jsonl(data_dir / "batch-inputs" / "digits.jsonl", rows)
    created = live_client.post("/batch-jobs", headers=ADMIN, json={
        "model": "digits", "source": {"type": "jsonl", "path": "digits.jsonl"}, "chunk_size": 40})
    assert created.status_code == 202, created.json
    job = wait_job(live_client, created.json["id"])
    assert job["status"] == "succeeded", job
    progress = job["progress"]
    assert (progress["total"], progress["valid"], progress["done"], progress["failed"], progress["invalid"]) == \
        (153, 150, 150, 0, 3)
    assert progress["chunks_total"] == progress["chunks_done"] == 4
    assert progress["rate_per_s"] > 0
    assert [error["line"] for error in job["errors"]] == [11, 12, 13]
    assert job["started_at"] and job["finished_at"]

    lines = live_client.get(f"/batch-jobs/{job['id']}/results", headers=ADMIN).get_data(as_text=True).splitlines()
    results = [json.loads(line) for line in lines]
    assert [row["line"] for row in results] == list(range(1, 154))
    refused = results[10:13]
    assert [row["input"] for row in refused] == ["{broken", {"pixels": [99] * 64}, {"text": "wrong model"}]
    assert [row["error"] for row in refused] == [error["error"] for error in job["errors"]]
    results = results[:10] + results[13:]
    accuracy = sum(row["output"]["label"] == y for row, y in zip(results, y_test[:150])) / 150
    assert accuracy >= 0.95

    hit = live_client.post("/models/digits/predictions", json={"input": rows[0]})
    assert hit.status_code == 200 and hit.json["cached"] is True


def test_realtime_prediction_completes_while_a_large_batch_runs(live_client, batch_worker, data_dir):
    # Load minilm first: on a loaded machine its load alone can outlast the batch job.
    warm = live_client.post("/models/minilm/predictions", json={"input": {"text": "warm up"}},
                            headers={"Prefer": "wait=60"})
    assert warm.status_code in (200, 202)
    # 100 s of batch work, so it is still running however long minilm takes here (the test cancels it).
    write_jsonl(data_dir / "batch-inputs" / "slow.jsonl", [{"x": i} for i in range(5000)])
    created = live_client.post("/batch-jobs", headers=ADMIN, json={
        "model": "slow", "source": {"type": "jsonl", "path": "slow.jsonl"}, "chunk_size": 20})
    job_id = created.json["id"]
    wait_job(live_client, job_id, until=lambda job: job["progress"]["done"] > 0)
    try:
        answer = live_client.post("/models/minilm/predictions", json={"input": {"text": "while the batch runs"}},
                                  headers={"Prefer": "wait=30"})
        if answer.status_code == 202:  # a busy machine can outlast the longest wait (30 s): poll on
            location = answer.headers["Location"]
            answer = wait_for(lambda: (r := live_client.get(location)).json["status"] not in ("queued", "running")
                              and r, 120, "the real-time prediction")
        assert answer.status_code == 200 and answer.json["status"] == "succeeded"
        job = live_client.get(f"/batch-jobs/{job_id}", headers=ADMIN).json
        assert job["status"] == "running" and job["progress"]["done"] < 5000
    finally:
        live_client.delete(f"/batch-jobs/{job_id}", headers=ADMIN)


def test_cancel_stops_a_running_job(live_client, batch_worker, data_dir):
    write_jsonl(data_dir / "batch-inputs" / "cancel.jsonl", [{"x": 1000 + i} for i in range(1000)])
    created = live_client.post("/batch-jobs", headers=ADMIN, json={
        "model": "slow", "source": {"type": "jsonl", "path": "cancel.jsonl"}, "chunk_size": 20})
    job_id = created.json["id"]
    wait_job(live_client, job_id, until=lambda job: job["progress"]["done"] > 0)
    canceled = live_client.delete(f"/batch-jobs/{job_id}", headers=ADMIN)
    assert canceled.status_code == 202 and canceled.json["status"] == "canceled"
    time.sleep(1.5)  # long enough for a running chunk to reach its next batch and stop
    first = live_client.get(f"/batch-jobs/{job_id}", headers=ADMIN).json["progress"]["done"]
    time.sleep(2.0)  # a job still running would compute 100 rows meanwhile
    later = live_client.get(f"/batch-jobs/{job_id}", headers=ADMIN).json
    assert later["status"] == "canceled"
    # At most the chunk that was running when the cancel came, if its worker was slow to see it.
    assert first <= later["progress"]["done"] <= first + 20 and later["progress"]["done"] < 1000


def test_resume_after_the_worker_is_killed_mid_job(tmp_path, repository_file, data_dir):
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    settings = Settings(redis_url=server.url, model_repository=str(repository_file), data_dir=str(data_dir))
    ctx = WorkerContext.build(settings, client)
    sender = CelerySender(create_celery(settings))
    inputs = [{"x": float(i)} for i in range(300)]
    write_jsonl(data_dir / "batch-inputs" / "resume.jsonl", inputs + ["not json"])
    procs = []
    try:
        procs.append(run_worker(server.url, client, tmp_path, "batch", model_repository=repository_file,
                                data_dir=data_dir))
        job = runner.create_job(ctx, model="slow", source={"type": "jsonl", "path": "resume.jsonl"}, chunk_size=10)
        runner.plan_job(job["id"], ctx, sender.send_chunk)
        store = runner.job_store(ctx)
        wait_for(lambda: len(store.done_chunks(job["id"])) >= 5, 60, "five chunks")
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait(10)
        finished_before_kill = set(store.done_chunks(job["id"]))
        assert len(finished_before_kill) < 30, "the job must still be unfinished when the worker dies"

        client.delete("ferry:workers")
        procs.append(run_worker(server.url, client, tmp_path, "batch", model_repository=repository_file,
                                data_dir=data_dir))
        runner.resume_job(job["id"], ctx, sender.send_chunk)
        wait_for(lambda: store.get(job["id"])["status"] == "succeeded", 120, "resumed job")

        progress = store.progress(store.get(job["id"]))
        assert (progress["valid"], progress["done"], progress["failed"], progress["invalid"]) == (300, 300, 0, 1)
        keys = [ctx.cache.key("slow", "1", item) for item in inputs]
        assert all(value is not None for value in client.mget(keys))
        runs = store.runs(job["id"])
        assert all(runs[number] == 1 for number in finished_before_kill), runs
        # 301 rows in chunks of ten: the bad line is found in the last chunk, by the worker.
        assert set(runs) == set(range(31)) and max(runs.values()) <= 2
    finally:
        for proc in procs:
            stop_group(proc)
        client.close()
        server.stop()


def test_cli_precompute_then_cache_hits_with_no_worker_running(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        texts = [f"sentence number {i}" for i in range(40)]
        (tmp_path / "batch-inputs").mkdir()
        source = tmp_path / "batch-inputs" / "sentences.csv"
        source.write_text("text,normalize\n" + "".join(f"{text},true\n" for text in texts))
        env = ferry_env(redis_url=server.url, data_dir=tmp_path)

        def ferry(*args):
            return subprocess.run([str(BIN / "ferry"), "batch", *args], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=300)

        result = ferry("run", "minilm", "sentences.csv", "--local")  # as the README writes it: in the input folder
        assert result.returncode == 0, result.stdout + result.stderr
        assert "succeeded: 40 cached, 0 failed, 0 invalid of 40 rows" in result.stdout
        assert "40/40" in result.stderr and "row/s" in result.stderr  # the progress bar
        job_id = result.stdout.split()[2]
        finished = ferry("cancel", job_id)
        assert finished.returncode == 1 and "has finished (succeeded)" in finished.stderr
        unknown = ferry("cancel", "f" * 32)
        assert unknown.returncode == 2 and "No batch job" in unknown.stderr
        assert not redis.Redis.from_url(server.url).exists(f"ferry:batch:{'f' * 32}")

        app = create_app({"TESTING": True, "redis_url": server.url})
        client = keyed_client(app)
        assert client.get("/health/ready").status_code == 503  # no worker at all
        hit = client.post("/models/minilm/predictions", json={"input": {"text": texts[7]}})
        assert hit.status_code == 200 and hit.json["cached"] is True
        assert len(hit.json["output"]["embedding"]) == 384
        miss = client.post("/models/minilm/predictions", json={"input": {"text": "never precomputed"}})
        assert miss.status_code == 202
    finally:
        server.stop()
