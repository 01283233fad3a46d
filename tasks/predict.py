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
import random
import time

import redis
from celery import current_app, shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure, task_postrun, task_prerun

from models.base import TRANSIENT_ERRORS, Canceled, canceling, error_message
from models.declaration import ModelSpec
from models.registry import UnknownModel
from tasks import logs, metrics, records
from tasks.cancellation import CancelCheck
from tasks.celery_app import PREDICT_TASK, SWEEP_TASK
from tasks.context import WorkerContext, current
from tasks.leases import worker_name
from tasks.progress import ProgressReporter

log = logging.getLogger(__name__)
# A prediction whose worker died this many times fails instead of killing another one.
MAX_ATTEMPTS = 3
_POLL_S = 0.001
# Machines' clocks differ a little; a retry message is never early by more than this.
_CLOCK_SLACK_S = 1.0


def run_prediction(prediction_id: str, ctx: WorkerContext, model: str | None = None,
                   version: str | None = None) -> str:
    """Run `prediction_id` (in a batch, when others wait for the same model); returns its
    status. Safe to run twice for the same id: a finished or claimed one is left alone.
    Its message names the model and version, so that reading the record, claiming it and
    filling the batch are one round trip; without them (a message from an older release)
    the record is read first."""
    if model is None or version is None:
        record = ctx.store.get(prediction_id)
        if record is None:
            return _missing(prediction_id)
        model, version = record["model"], record["version"]
    try:
        spec = ctx.registry.get(model, version)
        if spec.revision:
            # Registered at run time: make sure that registration still stands (one read,
            # cheap beside the remote call) before running on it.
            ctx.registry.sync(force=True)
            spec = ctx.registry.get(model, version)
    except UnknownModel:
        return _not_served(ctx, prediction_id, model, version)
    started = repr(time.time())
    taken = ctx.store.take(worker_name(), ctx.settings.claim_lease_s, spec.name, spec.version,
                           spec.max_batch_size - 1, started_at=started, revision=spec.revision, own_id=prediction_id,
                           not_before=time.time() + _CLOCK_SLACK_S)
    if taken.record is not None:
        logs.request_id.set(taken.record.get("request_id", ""))
    if taken.outcome == "missing":
        return _missing(prediction_id)
    if taken.outcome == "claimed":
        return "claimed elsewhere"  # a live worker runs it, or the sweeper re-sends it once its lease lapses
    if taken.outcome == "waiting":
        return "waiting to retry"  # its retry message, sent with a countdown, runs it
    if taken.outcome == "stale":  # the registration it was queued for is gone
        return _not_served(ctx, prediction_id, model, version, taken.record)
    if taken.outcome != "taken":
        return taken.outcome  # finished already
    batch = [taken.record, *taken.others]
    for record in batch:
        record.update(status=records.RUNNING, started_at=started)
    with ctx.leases.holding([record["id"] for record in batch]) as held:
        batch += _gather(ctx, spec, len(batch), held)
        return _run_batch(ctx, spec, batch)[prediction_id]


def _missing(prediction_id: str) -> str:
    log.warning("prediction %s has no record (expired or never issued); skipped", prediction_id)
    return "missing"


def _not_served(ctx: WorkerContext, prediction_id: str, model: str, version: str, record: dict | None = None) -> str:
    record = record or ctx.store.get(prediction_id)
    if record is None:
        return _missing(prediction_id)
    if record["status"] in records.TERMINAL:
        return record["status"]
    return _fail(ctx, prediction_id, f"Model {model!r} version {version!r} is not served any more.", model, record)


def _gather(ctx: WorkerContext, spec: ModelSpec, size: int, held: list[str]) -> list[dict]:
    """More of the batch: when some were queued but not a full batch, those that arrive
    within max_wait_ms. Each is claimed, marked running and its lease held as it is taken."""
    more: list[dict] = []
    if size < 2 or size >= spec.max_batch_size or not spec.max_wait_ms:
        return more
    deadline = time.monotonic() + spec.max_wait_ms / 1000
    while size + len(more) < spec.max_batch_size and time.monotonic() < deadline:
        started = repr(time.time())
        taken = ctx.store.take(worker_name(), ctx.settings.claim_lease_s, spec.name, spec.version,
                               spec.max_batch_size - size - len(more), started_at=started, revision=spec.revision)
        for record in taken.others:
            record.update(status=records.RUNNING, started_at=started)
            held.append(record["id"])
        more += taken.others
        if not taken.others:
            time.sleep(_POLL_S)
    return more


def _run_batch(ctx: WorkerContext, spec: ModelSpec, batch: list[dict]) -> dict[str, str]:
    ids = [record["id"] for record in batch]
    size = len(batch)
    observed = metrics.Observations(ctx.settings.key_prefix)
    begun = time.time()
    for record in batch:
        record["batch_size"] = str(size)
        observed.observe(metrics.QUEUE_WAIT, spec.name, max(0.0, begun - float(record["queued_at"])))
    outcomes: list[tuple[str | None, str | None]]
    loading = True
    try:
        if batch[0]["version"] != spec.version:
            raise LookupError(f"version {batch[0]['version']} of model {spec.name} is no longer served")
        model = ctx.pool.get(spec)  # load first, so the forward pass is timed alone
        loading = False
        inputs = [json.loads(record["input"]) for record in batch]
        forward_started = time.perf_counter()
        # A time limit, a cancel or a transient error is the batch's, not one input's: no
        # item-by-item rerun.
        with canceling(model, CancelCheck(ctx.store, ids) if spec.cancelable else lambda: False):
            outcomes = ctx.pool.predict(spec, inputs, fatal=(SoftTimeLimitExceeded, Canceled, *TRANSIENT_ERRORS),
                                        progress=ProgressReporter(ctx.store, ids))
        observed.observe(metrics.PREDICT_SECONDS, spec.name, time.perf_counter() - forward_started)
        observed.observe(metrics.BATCH_SIZE, spec.name, len(batch))
    except SoftTimeLimitExceeded:
        if loading:
            log.warning("model %s: its setup outlasted timeout_s=%g; it goes on loading", spec.name, spec.timeout_s)
        outcomes = [(None, f"Timed out after {spec.timeout_s:g} s" + (
            " while the model was loading (Model.setup). It goes on loading in this worker process, for the "
            "predictions after this one. Hint: a setup slower than timeout_s fails the predictions that wait "
            "for it; make it faster, or raise timeout_s." if loading else "."))] * len(batch)
    except Canceled:
        outcomes = [(None, "Canceled while running.")] * len(batch)
    except TRANSIENT_ERRORS as exc:
        log.warning("model %s failed transiently: %s", spec.name, exc)
        return _retry_or_fail(ctx, spec, batch, error_message(exc))
    except Exception as exc:  # loading the model failed: every prediction in the batch says why
        log.exception("model %s could not run", spec.name)
        outcomes = [(None, error_message(exc))] * len(batch)
    finished = repr(time.time())
    # Canceled while running: whatever came of it, the answer is `canceled`.
    canceled = ctx.store.cancel_requested(ids) if spec.cancelable else set()
    run_ms = (float(finished) - begun) * 1000
    statuses = {}
    # A model removed while this batch ran has had its cached outputs dropped: add none back.
    cached = ctx.registry.serves(spec)
    pipe = ctx.redis.pipeline(transaction=False)
    for record, (encoded, error) in zip(batch, outcomes):
        tags = {"prediction_id": record["id"], "request_id": record.get("request_id") or "-"}
        if record["id"] in canceled:
            ctx.store.update(record["id"], records.CANCELED, pipe=pipe, record=record, finished_at=finished,
                             batch_size=size)
            statuses[record["id"]] = records.CANCELED
            log.info("prediction of %s canceled while running", spec.name, extra=tags)
        elif error is None:
            if record.get("retries"):  # a retry's note, now moot: neither stored nor announced
                record.pop("error", None)
                record.pop("retry_at", None)
                pipe.hdel(ctx.store.key(record["id"]), "error", "retry_at")
            if cached:
                ctx.cache.set(record["cache_key"], encoded, spec.cache_ttl_s, pipe=pipe)
            ctx.store.update(record["id"], records.SUCCEEDED, pipe=pipe, record=record, output=encoded,
                             finished_at=finished, batch_size=size)
            statuses[record["id"]] = records.SUCCEEDED
            log.info("prediction of %s succeeded in %.1f ms (batch of %d)", spec.name, run_ms, size, extra=tags)
        else:
            ctx.store.update(record["id"], records.FAILED, pipe=pipe, record=record, error=error, finished_at=finished,
                             batch_size=size)
            statuses[record["id"]] = records.FAILED
            log.warning("prediction of %s failed: %s", spec.name, error, extra=tags)
    for record in batch:
        ctx.request_log.finished(pipe, record, statuses[record["id"]], float(finished), float(record["started_at"]))
    succeeded = sum(status == records.SUCCEEDED for status in statuses.values())
    observed.count(metrics.COMPLETED, spec.name, succeeded)
    observed.count(metrics.FAILED, spec.name, sum(status == records.FAILED for status in statuses.values()))
    observed.write(pipe)
    ctx.store.release(ids, pipe=pipe)
    pipe.execute()
    return statuses


def _retry_or_fail(ctx: WorkerContext, spec: ModelSpec, batch: list[dict], error: str) -> dict[str, str]:
    """After a transient error: each prediction goes back to `queued` and is re-sent after
    an exponential backoff with jitter, until it has used up the model's retries."""
    now = time.time()
    statuses, retries = {}, []
    observed = metrics.Observations(ctx.settings.key_prefix)
    pipe = ctx.redis.pipeline(transaction=False)
    for record in batch:
        done = int(record.get("retries") or 0)
        if done >= spec.max_retries:
            ctx.store.update(record["id"], records.FAILED, pipe=pipe, record=record, finished_at=repr(now),
                             error=f"{error} (gave up after {done} retries)")
            statuses[record["id"]] = records.FAILED
            observed.count(metrics.FAILED, spec.name)
            ctx.request_log.finished(pipe, record, records.FAILED, now)
            continue
        delay = min(spec.retry_backoff_max_s, spec.retry_backoff_s * 2 ** done)
        delay = random.uniform(delay / 2, delay)
        ctx.store.update(record["id"], records.QUEUED, pipe=pipe, retries=done + 1, retry_at=repr(now + delay),
                         error=f"{error} (retry {done + 1} of {spec.max_retries} in {delay:.1f} s)")
        retries.append((record["id"], delay))
        statuses[record["id"]] = records.QUEUED
    ctx.store.release(list(statuses), pipe=pipe)
    # Should a retry message be lost, the sweeper re-sends the prediction after its deadline.
    ctx.store.expect_claim(pipe, {prediction_id: now + delay + ctx.settings.visibility_timeout_s
                                  for prediction_id, delay in retries})
    observed.write(pipe)
    pipe.execute()
    for prediction_id, delay in retries:
        ctx.sender.send(prediction_id, spec, countdown=delay)
    return statuses


def _fail(ctx: WorkerContext, prediction_id: str, message: str, model: str, record: dict | None = None) -> str:
    pipe = ctx.redis.pipeline(transaction=False)
    now = time.time()
    ctx.store.update(prediction_id, records.FAILED, pipe=pipe, record=record, error=message, finished_at=repr(now))
    if record is not None:
        ctx.request_log.finished(pipe, record, records.FAILED, now)
    observed = metrics.Observations(ctx.settings.key_prefix)
    observed.count(metrics.FAILED, model)
    observed.write(pipe)
    ctx.store.release([prediction_id], pipe=pipe)
    pipe.execute()
    return records.FAILED


def sweep(ctx: WorkerContext, send) -> list[str]:
    """Re-send predictions whose claim lapsed (their worker died mid-batch), failing those
    that have already taken MAX_ATTEMPTS workers down with them, and those queued longer
    than the visibility timeout whose message may be lost."""
    resent = []
    # kombu pops a message (BRPOP) before it records it as unacknowledged: a crash of Redis
    # or of the worker in between loses the message, never the record and its pending entry.
    stale_before = time.time() - ctx.settings.visibility_timeout_s
    for spec in ctx.registry.specs():
        for prediction_id in ctx.store.stale_pending(spec.name, spec.version, stale_before):
            send(prediction_id, spec)
            resent.append(prediction_id)
    for prediction_id in ctx.store.lapsed_claims():
        if ctx.store.is_claimed(prediction_id):
            continue  # claimed again since (by its own message): that worker's renewal moves the deadline
        record = ctx.store.get(prediction_id)
        if record is None or record["status"] in records.TERMINAL:
            ctx.store.release([prediction_id])
        elif int(record.get("attempts", 0)) - int(record.get("retries", 0)) >= MAX_ATTEMPTS:  # runs with no outcome
            _fail(ctx, prediction_id, f"The worker stopped while running this prediction, {MAX_ATTEMPTS} times.",
                  record["model"], record)
        else:
            # Back in the pending list before the message goes: if the message is lost, the
            # check for stale pending predictions above finds it next time.
            try:
                spec = ctx.registry.get(record["model"], record["version"])
            except UnknownModel:
                _fail(ctx, prediction_id, f"Model {record['model']!r} version {record['version']!r} is not served "
                                          "any more.", record["model"], record)
                continue
            ctx.store.requeue(prediction_id, record["model"], record["version"])
            send(prediction_id, spec)
            resent.append(prediction_id)
    return resent


@shared_task(name=PREDICT_TASK, ignore_result=True)
def predict(prediction_id: str, model: str | None = None, version: str | None = None) -> str:
    try:
        return run_prediction(prediction_id, current(), model, version)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # Redis went away mid-run, so the outcome may not be recorded: the message must not be
        # acknowledged (acks_late acknowledges failed tasks too). Re-queued, it runs again; if
        # Redis is still down the reject fails as well, and the broker re-delivers the message
        # after the visibility timeout.
        log.warning("prediction %s: Redis unreachable (%s); its message is re-queued", prediction_id, exc)
        raise Reject(str(exc), requeue=True) from exc


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
            _fail(ctx, args[0], f"Timed out: stopped after {exception.args[0]:g} s.", record["model"], record)
