"""Running a batch job: plan it into chunks, run each chunk, resume what was interrupted.

Plain functions over a context (Redis, registry, model pool, cache); the Celery tasks in
`tasks/batch.py` and the `ferry batch` command both call them.
"""
from __future__ import annotations

import json
import logging
import time

from batch_jobs import sources
from batch_jobs.store import CANCELED, FAILED, FINISHED, PLANNING, QUEUED, RUNNING, SUCCEEDED, BatchJobStore
from models.cache import input_digest
from models.registry import UnknownModel

log = logging.getLogger(__name__)


def job_store(ctx) -> BatchJobStore:
    return BatchJobStore(ctx.redis, ctx.settings.key_prefix, ctx.settings.batch_job_ttl_s)


def check_source(source: dict, ctx, *, confined: bool) -> dict:
    """Validate a source description early, so a bad one is refused when the job is created."""
    kind = source.get("type")
    if kind not in sources.SOURCE_TYPES:
        raise sources.SourceError(f"Source type must be one of {', '.join(sources.SOURCE_TYPES)}.")
    if kind == "popular":
        top_n = source.get("top_n", 1000)
        if not isinstance(top_n, int) or not 1 <= top_n <= ctx.settings.popular_max:
            raise sources.SourceError(f"top_n must be an integer from 1 to {ctx.settings.popular_max}.")
        return {"type": kind, "top_n": top_n}
    if not isinstance(source.get("path"), str):
        raise sources.SourceError(f"A {kind} source needs a `path`.")
    path = sources.resolve_path(source["path"], ctx.settings.batch_inputs, confined=confined)
    return {"type": kind, "path": str(path)}


def create_job(ctx, *, model: str, source: dict, chunk_size: int | None = None, batch_size: int | None = None,
               cache_ttl_s: int | None = None, origin: str = "api", confined: bool = True) -> dict:
    spec = ctx.registry.get(model)
    return job_store(ctx).create(
        model=spec.name, version=spec.version, revision=spec.revision,
        source=check_source(source, ctx, confined=confined),
        chunk_size=chunk_size or ctx.settings.batch_chunk_size,
        batch_size=batch_size or max(spec.max_batch_size, 32),
        cache_ttl_s=ctx.settings.batch_cache_ttl_s if cache_ttl_s is None else cache_ttl_s,
        origin=origin,
    )


def _job_spec(ctx, store, job: dict):
    """The model version the job was created for (a job never switches to a new default
    midway), or None once the job is failed because that version is no longer served."""
    try:
        spec = ctx.registry.get(job["model"], job["version"])
        if spec.revision == job.get("revision", ""):
            return spec
    except UnknownModel:
        pass
    store.set_status_unless_finished(job["id"], FAILED, finished_at=repr(time.time()),
                                     error=f"Model {job['model']!r} version {job['version']!r} is not served any more.")
    return None


def _cache_version(job: dict) -> str:
    return f"{job['version']}+{job['revision']}" if job.get("revision") else job["version"]


def _rows(job: dict, spec, ctx):
    source = json.loads(job["source"])
    if source["type"] == "jsonl":
        return sources.jsonl_rows(sources.Path(source["path"]))
    if source["type"] == "csv":
        return sources.csv_rows(sources.Path(source["path"]), spec)
    return sources.popular_rows(ctx.redis, ctx.settings.key_prefix, spec, source["top_n"])


def plan_job(job_id: str, ctx, dispatch) -> dict | None:
    """Read and validate the source, store it as chunks and dispatch each chunk as soon as
    it is full, so the workers start while the rest is still being read. Planning twice (a
    redelivered task) re-dispatches what is unfinished instead of re-reading."""
    store = job_store(ctx)
    job = store.get(job_id)
    if job is None or job["status"] in FINISHED:
        return job
    if job.get("n_chunks"):
        return resume_job(job_id, ctx, dispatch)
    now = repr(time.time())
    if not store.set_status_unless_finished(job_id, PLANNING, started_at=now, progress_at=now):
        return store.get(job_id)
    spec = _job_spec(ctx, store, job)
    if spec is None:
        return store.get(job_id)
    schema = ctx.registry.input_schema(spec.name, spec.version)
    chunk_size, batch_size = int(job["chunk_size"]), int(job["batch_size"])
    chunk: list = []
    n_chunks, valid, invalid, errors = 0, 0, 0, []

    def flush() -> None:
        nonlocal chunk, n_chunks
        store.write_chunk(job_id, n_chunks, chunk)
        store.set(job_id, progress_at=repr(time.time()))  # the watchdog sees a live planner
        dispatch(job_id, n_chunks)
        chunk, n_chunks = [], n_chunks + 1

    try:
        for line, validated, error in sources.validated_rows(_rows(job, spec, ctx), schema):
            if error is not None:
                invalid += 1
                if len(errors) < 100:
                    errors.append({"line": line, "error": error})
                continue
            valid += 1
            # The digest is taken here, while the worker runs earlier chunks, not on the
            # worker's path between forward passes.
            chunk.append([line, validated, input_digest(validated)])
            # The first chunks are one batch, then two, four...: the worker starts after one
            # batch is read, not a whole chunk, while later chunks are large enough that the
            # cost of a task (a message, bookkeeping in Redis) is spread over many inputs.
            if len(chunk) >= min(chunk_size, batch_size << n_chunks):
                flush()
        if chunk:
            flush()
    except (OSError, sources.SourceError, UnicodeDecodeError) as exc:
        store.set_status_unless_finished(job_id, FAILED, error=f"Could not read the source: {exc}",
                                         finished_at=repr(time.time()))
        return store.get(job_id)
    store.record_errors(job_id, errors)
    store.set(job_id, valid=valid, invalid=invalid, n_chunks=n_chunks)
    if store.set_status_unless_finished(job_id, RUNNING):
        # Chunks may all have finished while the source was still being read.
        _finish_if_complete(store, job_id)
    return store.get(job_id)


def run_chunk(job_id: str, number: int, ctx) -> str:
    """Run one chunk through the model in batches and write the outputs into the cache."""
    store = job_store(ctx)
    job = store.get(job_id)
    if job is None or job["status"] in FINISHED:
        return "skipped"
    if store.is_chunk_done(job_id, number):
        return "already done"
    items = store.chunk_items(job_id, number)
    if items is None:
        return "missing"
    spec = _job_spec(ctx, store, job)
    if spec is None:
        return FAILED
    ctx.pool.get(spec)  # load the model before a run is counted
    store.count_run(job_id, number)
    batch_size, ttl = int(job["batch_size"]), int(job["cache_ttl_s"])
    key_prefix = ctx.cache.key_prefix(spec.name, spec.cache_version)
    ok, failed, errors = 0, 0, []
    for start in range(0, len(items), batch_size):
        if start and store.get(job_id).get("status") == CANCELED:
            return CANCELED
        batch = items[start:start + batch_size]
        keys, outputs = [], []
        for item, (output, error) in zip(batch, ctx.pool.predict(spec, [item[1] for item in batch])):
            if error is None:
                keys.append(key_prefix + _digest(item))
                outputs.append(output)
            else:
                errors.append({"line": item[0], "error": error})
        ctx.cache.set_many(keys, outputs, ttl)
        ok += len(keys)
        failed += len(batch) - len(keys)
    store.record_errors(job_id, errors)
    if store.finish_chunk(job_id, number, ok, failed):
        _finish_if_complete(store, job_id)
    return "done"


def _digest(item: list) -> str:
    # Chunks planned before digests were stored hold [line, input] only.
    return item[2] if len(item) > 2 else input_digest(item[1])


def _finish_if_complete(store: BatchJobStore, job_id: str) -> None:
    job = store.get(job_id)
    # n_chunks is written once planning has read the whole source; until then, never done.
    if job and job.get("n_chunks") and len(store.done_chunks(job_id)) >= int(job["n_chunks"]):
        store.set_status_unless_finished(job_id, SUCCEEDED, finished_at=repr(time.time()))


def cancel_job(job_id: str, ctx) -> dict | None:
    store = job_store(ctx)
    store.set_status_unless_finished(job_id, CANCELED, finished_at=repr(time.time()))
    return store.get(job_id)


def resume_job(job_id: str, ctx, dispatch) -> dict | None:
    """Dispatch every chunk that has not finished; finished chunks are never recomputed."""
    store = job_store(ctx)
    job = store.get(job_id)
    if job is None or job["status"] in FINISHED:
        return job
    if job["status"] in (QUEUED, PLANNING) and not job.get("n_chunks"):
        store.set(job_id, status=QUEUED)
        return plan_job(job_id, ctx, dispatch)
    done = store.done_chunks(job_id)
    store.set(job_id, progress_at=repr(time.time()))
    for number in range(int(job["n_chunks"])):
        if number not in done:
            dispatch(job_id, number)
    _finish_if_complete(store, job_id)
    return store.get(job_id)


def resume_stale_jobs(ctx, dispatch) -> list[str]:
    """Re-dispatch jobs that stopped making progress (their worker died mid-chunk)."""
    store = job_store(ctx)
    resumed = []
    now = time.time()
    for job_id in store.list_ids(limit=1000):
        job = store.get(job_id)
        if job is None or job["status"] not in (QUEUED, PLANNING, RUNNING):
            continue
        last = float(job.get("progress_at") or job["created_at"])
        if now - last >= ctx.settings.batch_stale_s:
            log.warning("batch job %s made no progress for %.0fs; resuming", job_id, now - last)
            resume_job(job_id, ctx, dispatch)
            resumed.append(job_id)
    return resumed


def results(job_id: str, ctx):
    """Yield one dict per valid input, in source order: line, input, and output or error."""
    store = job_store(ctx)
    job = store.get(job_id)
    spec_name, version = job["model"], _cache_version(job)
    errors = {error["line"]: error["error"] for error in store.errors(job_id)}
    for number in range(int(job.get("n_chunks") or 0)):
        items = store.chunk_items(job_id, number) or []
        key_prefix = ctx.cache.key_prefix(spec_name, version)
        outputs = ctx.redis.mget([key_prefix + _digest(item) for item in items]) if items else []
        for (line, item, *_), raw in zip(items, outputs):
            row = {"line": line, "input": item}
            if raw is not None:
                row["output"] = json.loads(raw)
            else:
                row["error"] = errors.get(line, "No output (not computed yet, failed, or expired).")
            yield row
