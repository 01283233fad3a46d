"""Batch jobs in Redis.

    {prefix}batch:{id}              hash: the job (model, source, options, status, counts, times)
    {prefix}batch:{id}:chunk:{n}    JSON list of [line, validated input, sha256 of its canonical JSON],
                                    written when planned (older chunks lack the digest)
    {prefix}batch:{id}:done         hash: chunk -> {"ok", "failed"}, written once per chunk
    {prefix}batch:{id}:runs         hash: chunk -> times its model run started (resume audit)
    {prefix}batch:{id}:errors       list: a sample of {"line", "error"}, capped
    {prefix}batch-jobs              sorted set of job ids by creation time

Counts are derived from the `done` hash, so a chunk that runs twice is counted once.
"""
from __future__ import annotations

import json
import time
import uuid

import orjson
from redis.exceptions import WatchError

QUEUED, PLANNING, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    "queued", "planning", "running", "succeeded", "failed", "canceled")
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELED})
ERROR_SAMPLE = 100


class BatchJobStore:
    def __init__(self, redis, prefix: str = "ferry:", ttl_s: int = 7 * 24 * 3600):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, job_id: str, *parts) -> str:
        return ":".join([f"{self.prefix}batch", job_id, *map(str, parts)])

    @property
    def index_key(self) -> str:
        return f"{self.prefix}batch-jobs"

    def create(self, *, model: str, version: str, source: dict, chunk_size: int, batch_size: int,
               cache_ttl_s: int, origin: str, revision: str = "") -> dict:
        now = time.time()
        job = {
            "id": uuid.uuid4().hex, "model": model, "version": version, "source": json.dumps(source),
            "chunk_size": chunk_size, "batch_size": batch_size, "cache_ttl_s": cache_ttl_s,
            "origin": origin, "status": QUEUED, "created_at": repr(now),
        }
        if revision:  # a model registered at run time: this registration of it
            job["revision"] = revision
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(job["id"]), mapping=job)
        pipe.expire(self.key(job["id"]), self.ttl_s)
        pipe.zadd(self.index_key, {job["id"]: now})
        pipe.zremrangebyscore(self.index_key, 0, now - self.ttl_s)
        pipe.execute()
        return self.get(job["id"])

    def get(self, job_id: str) -> dict | None:
        return self.redis.hgetall(self.key(job_id)) or None

    def list_ids(self, limit: int = 100) -> list[str]:
        return self.redis.zrevrange(self.index_key, 0, limit - 1)

    def set(self, job_id: str, **fields) -> None:
        self.redis.hset(self.key(job_id), mapping={k: v for k, v in fields.items() if v is not None})

    def set_status_unless_finished(self, job_id: str, status: str, **fields) -> bool:
        """Move a job to `status` unless it already finished (a cancel must stick)."""
        key = self.key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "status") in FINISHED:
                        pipe.reset()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={"status": status, **fields})
                    pipe.execute()
                    return True
                except WatchError:
                    continue

    def write_chunk(self, job_id: str, number: int, items: list) -> None:
        self.redis.set(self.key(job_id, "chunk", number), orjson.dumps(items), ex=self.ttl_s)

    def chunk_items(self, job_id: str, number: int) -> list | None:
        raw = self.redis.get(self.key(job_id, "chunk", number))
        return None if raw is None else orjson.loads(raw)

    def record_errors(self, job_id: str, errors: list[dict]) -> None:
        if not errors:
            return
        key = self.key(job_id, "errors")
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, *(json.dumps(error) for error in errors[:ERROR_SAMPLE]))
        pipe.ltrim(key, 0, ERROR_SAMPLE - 1)
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def errors(self, job_id: str) -> list[dict]:
        return [json.loads(raw) for raw in self.redis.lrange(self.key(job_id, "errors"), 0, ERROR_SAMPLE - 1)]

    def count_run(self, job_id: str, number: int) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self.key(job_id, "runs"), number, 1)
        pipe.expire(self.key(job_id, "runs"), self.ttl_s)
        pipe.execute()

    def runs(self, job_id: str) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.redis.hgetall(self.key(job_id, "runs")).items()}

    def done_chunks(self, job_id: str) -> dict[int, dict]:
        return {int(k): json.loads(v) for k, v in self.redis.hgetall(self.key(job_id, "done")).items()}

    def is_chunk_done(self, job_id: str, number: int) -> bool:
        return bool(self.redis.hexists(self.key(job_id, "done"), number))

    def finish_chunk(self, job_id: str, number: int, ok: int, failed: int) -> bool:
        """Record a chunk's outcome once; True when this call recorded it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(self.key(job_id, "done"), number, json.dumps({"ok": ok, "failed": failed}))
        pipe.expire(self.key(job_id, "done"), self.ttl_s)
        pipe.hset(self.key(job_id), "progress_at", repr(time.time()))
        first, *_ = pipe.execute()
        return bool(first)

    def progress(self, job: dict) -> dict:
        done = self.done_chunks(job["id"])
        ok = sum(chunk["ok"] for chunk in done.values())
        failed = sum(chunk["failed"] for chunk in done.values())
        invalid = int(job.get("invalid", 0))
        valid = int(job.get("valid", 0))
        started = float(job["started_at"]) if job.get("started_at") else None
        end = float(job["finished_at"]) if job.get("finished_at") else time.time()
        rate = (ok + failed) / (end - started) if started and end > started else None
        remaining = valid - ok - failed
        return {
            "total": valid + invalid, "valid": valid, "done": ok, "failed": failed, "invalid": invalid,
            "chunks_total": int(job.get("n_chunks", 0)), "chunks_done": len(done),
            "rate_per_s": round(rate, 2) if rate else None,
            "eta_s": round(remaining / rate, 1) if rate and job["status"] == RUNNING else None,
        }
