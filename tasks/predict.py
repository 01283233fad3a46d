"""The predict task, with dynamic batching.

A task is one prediction's Celery message. The process that runs it claims that
prediction, fills a batch with other predictions queued for the same model (up to the
model's `max_batch_size`, waiting at most `max_wait_ms` for more when some are already
queued) and runs them as one forward pass. Every prediction keeps its own record, status
and error. The logic lives in `run_prediction`, which tests call directly.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from celery import current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure, task_postrun, task_prerun

from models.declaration import ModelSpec
from models.registry import UnknownModel
from tasks import logs, metrics, records
from tasks.celery_app import PREDICT_TASK, SWEEP_TASK
from tasks.context import WorkerContext, current
from tasks.progress import ProgressReporter

log = logging.getLogger(__name__)
# A prediction whose worker died this many times fails instead of killing another one.
MAX_ATTEMPTS = 3
_POLL_S = 0.001


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_prediction(prediction_id: str, ctx: WorkerContext) -> str:
    """Run `prediction_id` (in a batch, when others wait for the same model); returns its
    status. Safe to run twice for the same id: a finished or claimed one is left alone."""
    record = ctx.store.get(prediction_id)
    if record is None:
        log.warning("prediction %s has no record (expired or never issued); skipped", prediction_id)
        return "missing"
    logs.request_id.set(record.get("request_id", ""))
    if record["status"] in records.TERMINAL:
        return record["status"]
    try:
        spec = ctx.registry.get(record["model"])
    except UnknownModel:
        return _fail(ctx, prediction_id, f"Model {record['model']!r} is not served any more.", record["model"])
    won, taken = ctx.store.claim_and_take(prediction_id, worker_name(), _claim_ttl(spec),
                                          spec.name, spec.version, spec.max_batch_size - 1)
    if not won:
        return "claimed elsewhere"
    batch = [record] + _gather(ctx, spec, taken)
    return _run_batch(ctx, spec, batch)[prediction_id]


def _claim_ttl(spec: ModelSpec) -> float:
    # Longer than the hard time limit, so a live batch never loses its claim.
    return spec.timeout_s + 60


def _gather(ctx: WorkerContext, spec: ModelSpec, taken: list[str]) -> list[dict]:
    """The other predictions of the batch: those already taken from the queue and, when
    some were queued but not a full batch, those that arrive within max_wait_ms."""
    room = spec.max_batch_size - 1
    ids = list(taken)
    if ids and len(ids) < room and spec.max_wait_ms:
        deadline = time.monotonic() + spec.max_wait_ms / 1000
        while len(ids) < room and time.monotonic() < deadline:
            more = ctx.store.pop_pending(spec.name, spec.version, room - len(ids))
            ids += more
            if not more:
                time.sleep(_POLL_S)
    batch, stale = [], []
    for record in ctx.store.claim_records(ids, worker_name(), _claim_ttl(spec)):
        if record["status"] in records.TERMINAL or record["version"] != spec.version:
            stale.append(record["id"])
        else:
            batch.append(record)
    ctx.store.release(stale)
    return batch


def _run_batch(ctx: WorkerContext, spec: ModelSpec, batch: list[dict]) -> dict[str, str]:
    ids = [record["id"] for record in batch]
    started = repr(time.time())
    pipe = ctx.redis.pipeline(transaction=False)
    for record in batch:
        ctx.store.update(record["id"], records.RUNNING, pipe=pipe, started_at=started, batch_size=len(ids))
        pipe.hincrby(ctx.store.key(record["id"]), "attempts", 1)
        record.update(status=records.RUNNING, started_at=started, batch_size=str(len(ids)))
    ctx.store.announce_taken(spec.name, spec.version, pipe)
    pipe.execute()
    observed = metrics.Observations(ctx.settings.key_prefix)
    for record in batch:
        observed.observe(metrics.QUEUE_WAIT, spec.name, max(0.0, float(started) - float(record["queued_at"])))
    outcomes: list[tuple[str | None, str | None]]
    try:
        if batch[0]["version"] != spec.version:
            raise LookupError(f"version {batch[0]['version']} of model {spec.name} is no longer served")
        ctx.pool.get(spec)  # load first, so the forward pass is timed alone
        inputs = [json.loads(record["input"]) for record in batch]
        forward_started = time.perf_counter()
        outcomes = ctx.pool.predict(spec, inputs, fatal=(SoftTimeLimitExceeded,),
                                    progress=ProgressReporter(ctx.store, ids))
        observed.observe(metrics.PREDICT_SECONDS, spec.name, time.perf_counter() - forward_started)
        observed.observe(metrics.BATCH_SIZE, spec.name, len(batch))
    except SoftTimeLimitExceeded:
        outcomes = [(None, f"Timed out after {spec.timeout_s:g} s.")] * len(batch)
    except Exception as exc:  # loading the model failed: every prediction in the batch says why
        log.exception("model %s could not run", spec.name)
        outcomes = [(None, f"{type(exc).__name__}: {exc}")] * len(batch)
    finished = repr(time.time())
    statuses = {}
    pipe = ctx.redis.pipeline(transaction=False)
    for record, (encoded, error) in zip(batch, outcomes):
        if error is None:
            ctx.cache.set(record["cache_key"], encoded, spec.cache_ttl_s, pipe=pipe)
            ctx.store.update(record["id"], records.SUCCEEDED, pipe=pipe, record=record, output=encoded,
                             finished_at=finished)
            statuses[record["id"]] = records.SUCCEEDED
        else:
            ctx.store.update(record["id"], records.FAILED, pipe=pipe, record=record, error=error, finished_at=finished)
            statuses[record["id"]] = records.FAILED
    run_ms = (float(finished) - float(started)) * 1000
    for record, (_, error) in zip(batch, outcomes):
        tags = {"prediction_id": record["id"], "request_id": record.get("request_id") or "-"}
        if error is None:
            log.info("prediction of %s succeeded in %.1f ms (batch of %d)", spec.name, run_ms, len(batch), extra=tags)
        else:
            log.warning("prediction of %s failed: %s", spec.name, error, extra=tags)
    succeeded = sum(status == records.SUCCEEDED for status in statuses.values())
    observed.count(metrics.COMPLETED, spec.name, succeeded)
    observed.count(metrics.FAILED, spec.name, len(statuses) - succeeded)
    observed.write(pipe)
    ctx.store.release(ids, pipe=pipe)
    pipe.execute()
    return statuses


def _fail(ctx: WorkerContext, prediction_id: str, message: str, model: str) -> str:
    pipe = ctx.redis.pipeline(transaction=False)
    ctx.store.update(prediction_id, records.FAILED, pipe=pipe, error=message, finished_at=repr(time.time()))
    observed = metrics.Observations(ctx.settings.key_prefix)
    observed.count(metrics.FAILED, model)
    observed.write(pipe)
    ctx.store.release([prediction_id], pipe=pipe)
    pipe.execute()
    return records.FAILED


def sweep(ctx: WorkerContext, send) -> list[str]:
    """Re-send predictions whose claim lapsed (their worker died mid-batch); fail those
    that have already taken MAX_ATTEMPTS workers down with them."""
    resent = []
    for prediction_id in ctx.store.lapsed_claims():
        record = ctx.store.get(prediction_id)
        if record is None or record["status"] in records.TERMINAL:
            ctx.store.release([prediction_id])
        elif int(record.get("attempts", 0)) >= MAX_ATTEMPTS:
            _fail(ctx, prediction_id, f"The worker stopped while running this prediction, {MAX_ATTEMPTS} times.",
                  record["model"])
        else:
            ctx.store.release([prediction_id])
            spec = ctx.registry.get(record["model"])
            send(prediction_id, queue=spec.queue, timeout_s=spec.timeout_s, describe=f"{spec.name} {spec.version}")
            resent.append(prediction_id)
    return resent


@shared_task(name=PREDICT_TASK, ignore_result=True)
def predict(prediction_id: str) -> str:
    return run_prediction(prediction_id, current())


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep_task() -> list[str]:
    from tasks.senders import CelerySender

    return sweep(current(), CelerySender(current_app).send)


@task_prerun.connect(sender=predict)
def _ids_into_logs(sender=None, args=None, **kwargs):
    # The request id follows once the record is read (run_prediction).
    logs.prediction_id.set(args[0] if args else "")
    logs.request_id.set("")


@task_postrun.connect(sender=predict)
def _ids_out_of_logs(sender=None, **kwargs):
    # After Celery's own "succeeded" line, which still carries them.
    logs.prediction_id.set("")
    logs.request_id.set("")


@task_failure.connect(sender=predict)
def _hard_time_limit(sender=None, task_id=None, exception=None, args=None, **kwargs):
    """The worker killed a process past its hard limit: nothing in it can record that.
    Other predictions of the same batch are re-sent by the sweeper when their claim lapses."""
    if isinstance(exception, TimeLimitExceeded) and args:
        ctx = current()
        record = ctx.store.get(args[0])
        if record is not None and record["status"] not in records.TERMINAL:
            _fail(ctx, args[0], f"Timed out: stopped after {exception.args[0]:g} s.", record["model"])
