"""Batch jobs in Redis.

    {prefix}batch:{id}              hash: the job (model, source, options, status, counts, times)
    {prefix}batch:{id}:rows:{n}     JSON list of [line, the row's JSON text], written when planned
                                    (an older Ferry wrote `chunk:{n}`: [line, validated input, digest?])
    {prefix}batch:{id}:digests:{n}  JSON list: each row's sha256 of its canonical input, null if invalid;
                                    written when the chunk is done
    {prefix}batch:{id}:row-errors:{n}  JSON object: line -> why that row of the chunk has no output
                                    (refused, or failed in the model), written with `done`
    {prefix}batch:{id}:unreadable   list of JSON [line, why]: rows the planner could not read, in order
    {prefix}batch:{id}:inputs       JSON list: a popular source's inputs as its first plan read them
    {prefix}batch:{id}:done         hash: chunk -> {"ok", "failed", "invalid", "canceled"?}, written once per chunk
    {prefix}batch:{id}:runs         hash: chunk -> times its model run started (a fourth fails its rows)
    {prefix}batch:{id}:running:{n}  a run of chunk n (or of the planner: running:plan) is alive: set
                                    when it starts, renewed as it goes, deleted when it ends or the
                                    job is resumed
    {prefix}batch:{id}:errors       list: a sample of {"line", "error"}, capped
    {prefix}batch-jobs              sorted set of job ids by creation time

Counts are derived from the `done` hash, so a chunk that runs twice is counted once.
"""
from __future__ import annotations

import itertools
import json
import time
import uuid

import orjson
from redis.exceptions import WatchError

QUEUED, PLANNING, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    "queued", "planning", "running", "succeeded", "failed", "canceled")
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELED})
ERROR_SAMPLE = 100


_RELEASE_OWN = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


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
        """Move a job to `status` unless it already finished (a cancel must stick) or does
        not exist (an unknown id must not become a job of one field)."""
        key = self.key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.hget(key, "status")
                    if current is None or current in FINISHED:
                        pipe.reset()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={"status": status, **fields})
                    pipe.execute()
                    return True
                except WatchError:
                    continue

    def write_chunk(self, job_id: str, number: int, items: list) -> None:
        self.redis.set(self.key(job_id, "rows", number), orjson.dumps(items), ex=self.ttl_s)

    def chunk_items(self, job_id: str, number: int) -> list | None:
        raw = self.redis.get(self.key(job_id, "rows", number))
        if raw is None:  # a chunk an older Ferry planned; one of those never reads `rows`
            raw = self.redis.get(self.key(job_id, "chunk", number))
        return None if raw is None else orjson.loads(raw)

    def chunk_digests(self, job_id: str, number: int) -> list | None:
        raw = self.redis.get(self.key(job_id, "digests", number))
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
        """The sample, by line (chunks finish in any order)."""
        raw = self.redis.lrange(self.key(job_id, "errors"), 0, ERROR_SAMPLE - 1)
        return sorted((json.loads(error) for error in raw), key=lambda error: error["line"])

    def first_stamp(self, job_id: str, stamp: str) -> str:
        """The source file's stamp (size and modification time) as the job's first plan saw it."""
        key = self.key(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(key, "source_stamp", stamp)
        pipe.hget(key, "source_stamp")
        return pipe.execute()[1]

    def snapshot(self, job_id: str, read) -> list:
        """`read()`, kept for the job at its first call: later calls get that same list."""
        key = self.key(job_id, "inputs")
        raw = self.redis.get(key)
        if raw is None:
            self.redis.set(key, orjson.dumps(read()), ex=self.ttl_s, nx=True)  # two planners: one wins
            raw = self.redis.get(key)
        return orjson.loads(raw)

    def claim(self, job_id: str, run: int | str, ttl_s: int, token: str = "1") -> bool:
        """Start a run of a chunk (its number) or of the planner ("plan") that no live run
        holds; False while another does (a redelivered message, a duplicate)."""
        return bool(self.redis.set(self.key(job_id, "running", run), token, nx=True, ex=ttl_s))

    def release_own(self, job_id: str, run: int | str, token: str) -> None:
        """Let go of a claim if it is still the one `token` took: a run taken for dead, which
        ends after all, leaves its successor's alone."""
        self.redis.eval(_RELEASE_OWN, 1, self.key(job_id, "running", run), token)

    def claim_chunk(self, job_id: str, number: int, ttl_s: int) -> int | None:
        """`claim` a chunk: the runs of it so far, this one included; None while another holds it."""
        return self.count_run(job_id, number) if self.claim(job_id, number, ttl_s) else None

    def heartbeat(self, job_id: str, run: int | str, ttl_s: int) -> str | None:
        """A run is alive and the job makes progress; the job's status."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(self.key(job_id, "running", run), ttl_s)
        pipe.hset(self.key(job_id), "progress_at", repr(time.time()))
        pipe.hget(self.key(job_id), "status")
        return pipe.execute()[-1]

    def release(self, job_id: str, runs: list) -> None:
        """Let these run again although a run may hold them (ended, or taken for dead)."""
        if runs:
            self.redis.delete(*(self.key(job_id, "running", run) for run in runs))

    def count_run(self, job_id: str, number: int) -> int:
        """Count a run of a chunk; the runs so far, this one included."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self.key(job_id, "runs"), number, 1)
        pipe.expire(self.key(job_id, "runs"), self.ttl_s)
        return pipe.execute()[0]

    def runs(self, job_id: str) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.redis.hgetall(self.key(job_id, "runs")).items()}

    def done_chunks(self, job_id: str) -> dict[int, dict]:
        return {int(k): json.loads(v) for k, v in self.redis.hgetall(self.key(job_id, "done")).items()}

    def is_chunk_done(self, job_id: str, number: int) -> bool:
        return bool(self.redis.hexists(self.key(job_id, "done"), number))

    def finish_chunk(self, job_id: str, number: int, ok: int, failed: int, invalid: int, digests: list,
                     errors: list[dict], canceled: bool = False) -> bool:
        """Record a chunk's outcome once, with the digest of each of its rows (None for an
        invalid one), each error, and whether a cancel cut it short; True when this call
        recorded it."""
        outcome = {"ok": ok, "failed": failed, "invalid": invalid, **({"canceled": True} if canceled else {})}
        row_errors = orjson.dumps({str(error["line"]): error["error"] for error in errors})
        # One step: the run that records the chunk is the one whose errors are kept.
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key(job_id, "digests", number), orjson.dumps(digests), ex=self.ttl_s)
        pipe.set(self.key(job_id, "row-errors", number), row_errors, ex=self.ttl_s, nx=True)
        pipe.hsetnx(self.key(job_id, "done"), number, json.dumps(outcome))
        pipe.expire(self.key(job_id, "done"), self.ttl_s)
        pipe.delete(self.key(job_id, "running", number))
        pipe.hset(self.key(job_id), "progress_at", repr(time.time()))
        _, _, recorded, *_ = pipe.execute()
        return bool(recorded)

    def row_errors(self, job_id: str, number: int) -> dict[int, str] | None:
        """Why each row of a done chunk that has no output has none; None for a chunk that
        is not done, or was done by an older Ferry."""
        raw = self.redis.get(self.key(job_id, "row-errors", number))
        return None if raw is None else {int(line): error for line, error in orjson.loads(raw).items()}

    def add_unreadable(self, job_id: str, rows: list[tuple[int, str]], *, first: bool = False) -> None:
        """Append rows the planner could not read; `first` starts the list afresh (a plan made again)."""
        key = self.key(job_id, "unreadable")
        pipe = self.redis.pipeline(transaction=False)
        if first:
            pipe.delete(key)
        if rows:
            pipe.rpush(key, *(orjson.dumps(row) for row in rows))
            pipe.expire(key, self.ttl_s)
        pipe.execute()

    def unreadable(self, job_id: str, page: int = 1000):
        """The rows the planner could not read, [line, why], in order."""
        key = self.key(job_id, "unreadable")
        for start in itertools.count(0, page):
            rows = self.redis.lrange(key, start, start + page - 1)
            yield from (orjson.loads(row) for row in rows)
            if len(rows) < page:
                return

    def progress(self, job: dict) -> dict:
        """Counts of rows: `total` read; `invalid` so far (unreadable when planned, or refused by
        the model's schema on a worker); `valid`, the rest; `remaining`, those not computed
        yet (0 once the job succeeded; what a canceled job left); `done` cached; `failed` by
        the model. Also chunks, rows a second, and ETA."""
        done = self.done_chunks(job["id"])
        ok = sum(chunk["ok"] for chunk in done.values())
        failed = sum(chunk["failed"] for chunk in done.values())
        refused = sum(chunk.get("invalid", 0) for chunk in done.values())
        unreadable = int(job.get("invalid", 0))
        # Jobs planned by an older Ferry, which checked rows while planning, count them as `valid`.
        planned = int(job.get("planned") or job.get("valid") or 0)
        valid = planned - refused
        started = float(job["started_at"]) if job.get("started_at") else None
        end = float(job["finished_at"]) if job.get("finished_at") else time.time()
        rate = (ok + failed + refused) / (end - started) if started and end > started else None
        remaining = valid - ok - failed
        return {
            "total": planned + unreadable, "valid": valid, "remaining": remaining, "done": ok, "failed": failed,
            "invalid": unreadable + refused,
            "chunks_total": int(job.get("n_chunks", 0)), "chunks_done": len(done),
            "rate_per_s": round(rate, 2) if rate else None,
            "eta_s": round(remaining / rate, 1) if rate and job["status"] == RUNNING else None,
        }
