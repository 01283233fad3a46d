"""Running a batch job: plan it into chunks, run each chunk, resume what was interrupted.

Plain functions over a context (Redis, registry, model pool, cache); the Celery tasks in
`tasks/batch.py` and the `ferry batch` command both call them.
"""
from __future__ import annotations

import contextlib
import gc
import heapq
import json
import logging
import time
import uuid

import orjson

from batch_jobs import sources
from batch_jobs.store import CANCELED, ERROR_SAMPLE, FAILED, FINISHED, PLANNING, QUEUED, RUNNING, SUCCEEDED, BatchJobStore
from models.cache import input_digest
from models.registry import UnknownModel, UnknownVersion
from tasks.predict import MAX_ATTEMPTS

log = logging.getLogger(__name__)


@contextlib.contextmanager
def paused_gc():
    """No cyclic garbage collection while planning or running a chunk. A chunk is thousands
    of acyclic dicts and lists, freed by reference counting; while they live, the collector
    walks them again each time a few hundred more are made (digits: a fifth of the worker's
    CPU in its chunk's JSON and the model's inputs and outputs). Cycles made meanwhile are
    collected when it resumes."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def job_store(ctx) -> BatchJobStore:
    return BatchJobStore(ctx.redis, ctx.settings.key_prefix, ctx.settings.batch_job_ttl_s)


def check_source(source: dict, ctx, *, confined: bool) -> dict:
    """Validate a source description early, so a bad one is refused when the job is created."""
    if not isinstance(source, dict):
        raise sources.SourceError('A source is an object such as {"type": "jsonl", "path": "inputs.jsonl"}.')
    kind = source.get("type")
    if kind not in sources.SOURCE_TYPES:
        raise sources.SourceError(f"Source type must be one of {', '.join(sources.SOURCE_TYPES)}.")
    if kind == "popular":
        top_n = source.get("top_n", 1000)
        if isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= ctx.settings.popular_max:
            raise sources.SourceError(f"top_n must be an integer from 1 to {ctx.settings.popular_max}.")
        return {"type": kind, "top_n": top_n}
    if not isinstance(source.get("path"), str):
        raise sources.SourceError(f"A {kind} source needs a `path`.")
    path = sources.resolve_path(source["path"], ctx.settings.batch_inputs, confined=confined)
    return {"type": kind, "path": str(path)}


# The bounds of a job's options, for the API's schema and the command line alike.
LIMITS = {"chunk_size": (1, 100_000), "batch_size": (1, 4096), "cache_ttl_s": (60, 90 * 24 * 3600)}


class OptionError(ValueError):
    """An option of a job outside what it may be; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_options(spec, **options: int | None) -> None:
    """Each option given within LIMITS. A model on the other side of HTTP or a pipe gets
    batches no larger than its declared max_batch_size, which its server or program may
    insist on; a model in the worker's own process takes larger ones, which precompute
    faster, while max_batch_size bounds only the latency of real-time batches."""
    for field, value in options.items():
        low, high = LIMITS[field]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
            raise OptionError(field, f"Must be an integer from {low} to {high}.")
    if spec.kind != "torch" and (options.get("batch_size") or 0) > spec.max_batch_size:
        raise OptionError("batch_size", f"Model {spec.name!r} ({spec.kind}) takes batches of at most "
                                        f"{spec.max_batch_size} (its max_batch_size).")


def create_job(ctx, *, model: str, source: dict, version: str | None = None, chunk_size: int | None = None,
               batch_size: int | None = None, cache_ttl_s: int | None = None, origin: str = "api",
               confined: bool = True) -> dict:
    spec = ctx.registry.get(model, version)
    check_options(spec, chunk_size=chunk_size, batch_size=batch_size, cache_ttl_s=cache_ttl_s)
    return job_store(ctx).create(
        model=spec.name, version=spec.version, revision=spec.revision,
        source=check_source(source, ctx, confined=confined),
        chunk_size=chunk_size or ctx.settings.batch_chunk_size,
        batch_size=batch_size or (max(spec.max_batch_size, 32) if spec.kind == "torch" else spec.max_batch_size),
        cache_ttl_s=ctx.settings.batch_cache_ttl_s if cache_ttl_s is None else cache_ttl_s,
        origin=origin,
    )


def unknown(exc: UnknownModel, model, version) -> str:
    """What a job naming a model, or a version of it, that is not served is told (API, CLI, nightly)."""
    return f"Model {model!r} serves no version {version!r}." if isinstance(exc, UnknownVersion) \
        else f"No model named {model!r}."


def record_refused(ctx, exc: Exception, *, origin: str, model, source, version=None, **options) -> dict:
    """A job that `create_job` refused, recorded as failed with the reason: a scheduled run
    that cannot start leaves a trace where operators look for it, not only in a log."""
    error = unknown(exc, model, version) if isinstance(exc, UnknownModel) else str(exc)
    given = {key: options.get(key) if type(options.get(key)) is int else 0 for key in LIMITS}
    store = job_store(ctx)
    job = store.create(model=str(model), version=str(version or ""), origin=origin,
                       source=source if isinstance(source, dict) else {"given": str(source)}, **given)
    store.set_status_unless_finished(job["id"], FAILED, error=error, finished_at=repr(time.time()))
    return store.get(job["id"])


def _served_spec(ctx, job: dict):
    """The model version the job was created for (a job never switches to a new default
    midway), or None once that version is no longer served."""
    try:
        spec = ctx.registry.get(job["model"], job["version"])
    except UnknownModel:
        return None
    return spec if spec.revision == job.get("revision", "") else None


def _job_spec(ctx, store, job: dict):
    """`_served_spec`; a job whose version is gone is failed, with the reason."""
    spec = _served_spec(ctx, job)
    if spec is None:
        store.set_status_unless_finished(job["id"], FAILED, finished_at=repr(time.time()), error=_gone(job))
    return spec


def _gone(job: dict) -> str:
    return f"Model {job['model']!r} version {job['version']!r} is not served any more."


def _cache_version(job: dict) -> str:
    return f"{job['version']}+{job['revision']}" if job.get("revision") else job["version"]


def _rows(store: BatchJobStore, job: dict, spec, ctx):
    source = json.loads(job["source"])
    if source["type"] in ("jsonl", "csv"):
        path = sources.Path(source["path"])
        # A plan made again (its planner died) must split the same rows as the first.
        stat = path.stat()
        stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
        if store.first_stamp(job["id"], stamp) != stamp:
            raise sources.SourceError("the file changed after this job began reading it; start a new job")
        return sources.jsonl_rows(path) if source["type"] == "jsonl" else sources.csv_rows(path, spec)
    # The ranking moves: a plan made again (its planner died) must split the same inputs.
    members = store.snapshot(
        job["id"], lambda: sources.popular_members(ctx.redis, ctx.settings.key_prefix, spec, source["top_n"]))
    return enumerate(members, start=1)  # the rank stands for the line


@paused_gc()
def plan_job(job_id: str, ctx, dispatch) -> dict | None:
    """Split the source's rows into chunks and dispatch each chunk as soon as it is full, so
    the workers start while the rest is still being read. Rows are checked on the workers,
    not here: one planner would otherwise cap every job at the rate one core validates
    (digits: 80,000 rows a second), however many workers run it. Planning twice (a
    redelivered task) re-dispatches what is unfinished instead of re-reading."""
    store = job_store(ctx)
    job = store.get(job_id)
    if job is None or job["status"] in FINISHED:
        return job
    if job.get("n_chunks"):  # planned already: its chunks may be running, and keep their claims
        return resume_job(job_id, ctx, dispatch, take_for_dead=False)
    alive_s, token = _alive_s(ctx), uuid.uuid4().hex
    if not store.claim(job_id, "plan", alive_s, token):
        return store.get(job_id)  # another planner reads the source (its task delivered again)
    try:
        return _plan(store, job, ctx, dispatch, alive_s)
    finally:
        store.release_own(job_id, "plan", token)


def _alive_s(ctx) -> int:
    """How long a run (a chunk's, the planner's) holds its claim after its last sign of life."""
    return max(1, int(ctx.settings.batch_stale_s))


def _plan(store: BatchJobStore, job: dict, ctx, dispatch, alive_s: int) -> dict | None:
    job_id = job["id"]
    now = repr(time.time())
    if not store.set_status_unless_finished(job_id, PLANNING, started_at=now, progress_at=now):
        return store.get(job_id)
    spec = _job_spec(ctx, store, job)
    if spec is None:
        return store.get(job_id)
    chunk_size, batch_size = int(job["chunk_size"]), int(job["batch_size"])
    chunk: list = []
    n_chunks, planned, unreadable, errors, unread = 0, 0, 0, [], []
    store.add_unreadable(job_id, [], first=True)

    def flush() -> str | None:
        """Store and send the chunk; the job's status."""
        nonlocal chunk, n_chunks, errors, unread
        store.write_chunk(job_id, n_chunks, chunk)
        store.add_unreadable(job_id, unread)
        # The counts so far, before the chunk can run (its refused rows are counted among them).
        store.set(job_id, planned=planned, invalid=unreadable)
        store.record_errors(job_id, errors)
        dispatch(job_id, n_chunks)
        chunk, n_chunks, errors, unread = [], n_chunks + 1, [], []
        return store.heartbeat(job_id, "plan", alive_s)  # the watchdog, and a planner sent again, see it alive

    try:
        for line, text in _rows(store, job, spec, ctx):
            if isinstance(text, sources.SourceRowError):
                unreadable += 1
                if unreadable <= ERROR_SAMPLE:
                    errors.append({"line": line, "error": text.message})
                unread.append((line, text.message))
                if len(unread) >= chunk_size:  # a file of unreadable rows is held in memory a chunk at a time
                    store.add_unreadable(job_id, unread)
                    unread = []
                continue
            planned += 1
            chunk.append([line, text])
            # The first chunks are one batch, then two, four...: the worker starts after one
            # batch is read, not a whole chunk, while later chunks are large enough that the
            # cost of a task (a message, bookkeeping in Redis) is spread over many inputs.
            if len(chunk) >= min(chunk_size, batch_size << n_chunks):
                if flush() in FINISHED:  # canceled, or failed: nothing more is read, stored or sent
                    break
        if chunk:
            flush()
    except (OSError, sources.SourceError, UnicodeDecodeError) as exc:
        store.set_status_unless_finished(job_id, FAILED, error=f"Could not read the source: {exc}",
                                         finished_at=repr(time.time()))
        return store.get(job_id)
    store.record_errors(job_id, errors)
    store.add_unreadable(job_id, unread)
    store.set(job_id, planned=planned, invalid=unreadable, n_chunks=n_chunks)
    if store.set_status_unless_finished(job_id, RUNNING):
        # Chunks may all have finished while the source was still being read.
        _finish_if_complete(store, job_id)
    return store.get(job_id)


@paused_gc()
def run_chunk(job_id: str, number: int, ctx) -> str:
    """Check a chunk's rows, run the valid ones through the model in batches and write the
    outputs into the cache."""
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
    alive_s = _alive_s(ctx)
    runs = store.claim_chunk(job_id, number, alive_s)
    if runs is None:
        return "running elsewhere"
    rows, errors = _checked(items, ctx.registry.input_schema(spec.name, spec.version))
    invalid = len(errors)
    to_run = rows
    if runs > MAX_ATTEMPTS:
        # Each earlier run took its worker down (out of memory, a crash in native code): one
        # more would too, and the job would never finish.
        log.error("batch job %s chunk %s: its worker stopped %s times while running it; its rows fail",
                  job_id, number, MAX_ATTEMPTS)
        message = f"Not computed: the worker stopped while running this row's chunk, {MAX_ATTEMPTS} times."
        errors += [{"line": line, "error": message} for line, _, _ in rows]
        to_run = []
    batch_size, ttl = int(job["batch_size"]), int(job["cache_ttl_s"])
    key_prefix = ctx.cache.key_prefix(spec.name, spec.cache_version)
    ok, failed = 0, len(rows) - len(to_run)
    outcome = "done"
    for start in range(0, len(to_run), batch_size):
        if start and store.heartbeat(job_id, number, alive_s) == CANCELED:
            outcome = CANCELED  # what is cached so far is recorded, and the rest never runs
            break
        batch = to_run[start:start + batch_size]
        keys, outputs = [], []
        for (line, _, digest), (output, error) in zip(batch, ctx.pool.predict(spec, [row[1] for row in batch])):
            if error is None:
                keys.append(key_prefix + digest)
                outputs.append(output)
            else:
                errors.append({"line": line, "error": error})
        ctx.cache.set_many(keys, outputs, ttl)
        ok += len(keys)
        failed += len(batch) - len(keys)
    # The digests of the valid rows, so that reading results needs no model schema.
    digests = _aligned_digests(items, rows)
    if store.finish_chunk(job_id, number, ok, failed, invalid, digests, errors, canceled=outcome == CANCELED):
        # Only the run that recorded the chunk adds its errors: a chunk run twice lists them once.
        store.record_errors(job_id, errors)
        _finish_if_complete(store, job_id)
    return outcome


def _checked(items: list, schema) -> tuple[list[tuple[int, dict, str]], list[dict]]:
    """`(line, validated input, digest)` of a chunk's valid rows, and `{"line", "error"}` of
    the others. A chunk planned by an older Ferry holds inputs it validated already, with their
    digest or, older still, without."""
    if items and not isinstance(items[0][1], str):
        return [(item[0], item[1], item[2] if len(item) > 2 else input_digest(item[1])) for item in items], []
    rows, errors = [], []
    for line, validated, error in sources.validated_rows(items, schema):
        if error is None:
            rows.append((line, validated, input_digest(validated)))
        else:
            errors.append({"line": line, "error": error})
    return rows, errors


def _finish_if_complete(store: BatchJobStore, job_id: str) -> None:
    job = store.get(job_id)
    # n_chunks is written once planning has read the whole source; until then, never done.
    if job and job.get("n_chunks") and len(store.done_chunks(job_id)) >= int(job["n_chunks"]):
        progress = store.progress(job)
        if progress["total"] and not progress["done"]:
            # Rows, and none cached: a nightly run whose inputs no longer fit the model must be seen.
            store.set_status_unless_finished(
                job_id, FAILED, finished_at=repr(time.time()),
                error=f"Nothing was cached: of {progress['total']} rows, {progress['invalid']} were invalid and "
                      f"{progress['failed']} failed in the model; the job's errors list the first of them.")
        else:
            store.set_status_unless_finished(job_id, SUCCEEDED, finished_at=repr(time.time()))


def cancel_job(job_id: str, ctx) -> dict | None:
    store = job_store(ctx)
    store.set_status_unless_finished(job_id, CANCELED, finished_at=repr(time.time()))
    return store.get(job_id)


def resume_job(job_id: str, ctx, dispatch, take_for_dead: bool = True) -> dict | None:
    """Dispatch every chunk that has not finished (planning it again first if its planner
    did not finish); finished chunks are never recomputed. `take_for_dead`: the runs that
    hold them (the watchdog saw no progress, or the operator says so) are let go."""
    store = job_store(ctx)
    job = store.get(job_id)
    if job is None or job["status"] in FINISHED:
        return job
    if job["status"] in (QUEUED, PLANNING) and not job.get("n_chunks"):
        if not store.set_status_unless_finished(job_id, QUEUED):  # canceled meanwhile
            return store.get(job_id)
        if take_for_dead:
            store.release(job_id, ["plan"])
        return plan_job(job_id, ctx, dispatch)
    done = store.done_chunks(job_id)
    store.set(job_id, progress_at=repr(time.time()))
    unfinished = [number for number in range(int(job["n_chunks"])) if number not in done]
    if take_for_dead:
        store.release(job_id, unfinished)
    for number in unfinished:
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
            try:
                resume_job(job_id, ctx, dispatch)
            except Exception:  # one job's failure must not keep the others from resuming
                log.exception("batch job %s could not be resumed", job_id)
                continue
            resumed.append(job_id)
    return resumed


def results(job_id: str, ctx):
    """Yield one dict per row of the source, in its order: line, the input as the source gave
    it (null for a row that could not be read), and output or error."""
    store = job_store(ctx)
    unreadable = ({"line": line, "input": None, "error": error} for line, error in store.unreadable(job_id))
    return heapq.merge(_chunk_results(store, job_id, ctx), unreadable, key=lambda row: row["line"])


def _chunk_results(store: BatchJobStore, job_id: str, ctx):
    job = store.get(job_id)
    spec = _served_spec(ctx, job)
    schema = spec and ctx.registry.input_schema(spec.name, spec.version)
    sample = None
    key_prefix = ctx.cache.key_prefix(job["model"], _cache_version(job))
    done = store.done_chunks(job_id)
    for number in range(int(job.get("n_chunks") or 0)):
        not_computed = _not_computed(job, done.get(number))
        items = store.chunk_items(job_id, number) or []
        digests, errors = store.chunk_digests(job_id, number), store.row_errors(job_id, number)
        if digests is None:  # not done yet: its rows checked here
            if items and isinstance(items[0][1], str) and schema is None:  # of a version no longer served
                yield from ({"line": item[0], "input": _as_given(item[1]), "error": _gone(job)} for item in items)
                continue
            rows, refused = _checked(items, schema)
            digests, errors = _aligned_digests(items, rows), {error["line"]: error["error"] for error in refused}
        elif errors is None:  # done by an older Ferry, which kept only the job's sample of errors
            if sample is None:
                sample = {error["line"]: error["error"] for error in store.errors(job_id)}
            errors = sample
        valid = [digest for digest in digests if digest]
        outputs = iter(ctx.redis.mget([key_prefix + digest for digest in valid]) if valid else [])
        for item, digest in zip(items, digests):
            row = {"line": item[0], "input": _as_given(item[1])}
            raw = next(outputs) if digest else None
            if raw is not None:
                row["output"] = json.loads(raw)
            else:
                row["error"] = errors.get(item[0], not_computed if digest else "Refused by the model's schema.")
            yield row


def _not_computed(job: dict, outcome: dict | None) -> str:
    """Why a valid row of a chunk with this outcome has no output, beyond its own error."""
    if job["status"] == CANCELED:
        if outcome is None:
            return "Not computed: the job was canceled."
        if outcome.get("canceled"):
            return "No output: not computed (the job was canceled), or expired."
    return "No output (not computed yet, failed, or expired)."


def _aligned_digests(items: list, rows: list[tuple[int, dict, str]]) -> list:
    """Each item's digest, from the valid `rows` `_checked` made of them; None for the others."""
    digest_of = {line: digest for line, _, digest in rows}
    return [digest_of.get(item[0]) for item in items]


def _as_given(value):
    """A row's input as the source wrote it: its JSON, or its text when that is not JSON."""
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
