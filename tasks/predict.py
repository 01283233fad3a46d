"""The predict task: thin wrapper around `run_prediction`, which tests call directly."""
from __future__ import annotations

import json
import logging
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure

from models.base import checked_predict, encode_output
from models.registry import UnknownModel
from tasks import records
from tasks.celery_app import PREDICT_TASK
from tasks.context import WorkerContext, current

log = logging.getLogger(__name__)


def run_prediction(prediction_id: str, ctx: WorkerContext) -> str:
    """Run one prediction and record the outcome; returns the final status.

    Safe to run twice for the same id (at-least-once delivery): a finished record is
    left as it is.
    """
    record = ctx.store.get(prediction_id)
    if record is None:
        log.warning("prediction %s has no record (expired or never issued); skipped", prediction_id)
        return "missing"
    if record["status"] in records.TERMINAL:
        return record["status"]
    ctx.store.update(prediction_id, records.RUNNING, started_at=repr(time.time()))
    try:
        spec = ctx.registry.get(record["model"])
        if spec.version != record["version"]:
            raise LookupError(f"version {record['version']} of model {spec.name} is no longer served")
        model = ctx.pool.get(spec)
        encoded = encode_output(checked_predict(model, [json.loads(record["input"])])[0])
    except SoftTimeLimitExceeded:
        return _fail(ctx, prediction_id, f"Timed out after {spec.timeout_s:g} s.")
    except UnknownModel:
        return _fail(ctx, prediction_id, f"Model {record['model']!r} is not served any more.")
    except Exception as exc:  # the model's own failure is the prediction's result
        log.exception("prediction %s failed", prediction_id)
        return _fail(ctx, prediction_id, f"{type(exc).__name__}: {exc}")
    ctx.cache.set(record["cache_key"], encoded, spec.cache_ttl_s)
    ctx.store.update(prediction_id, records.SUCCEEDED, output=encoded, finished_at=repr(time.time()))
    return records.SUCCEEDED


def _fail(ctx: WorkerContext, prediction_id: str, message: str) -> str:
    ctx.store.update(prediction_id, records.FAILED, error=message, finished_at=repr(time.time()))
    return records.FAILED


@shared_task(name=PREDICT_TASK, ignore_result=True)
def predict(prediction_id: str) -> str:
    return run_prediction(prediction_id, current())


@task_failure.connect(sender=predict)
def _hard_time_limit(sender=None, task_id=None, exception=None, args=None, **kwargs):
    """The worker killed a process past its hard limit: nothing in it can record that."""
    if isinstance(exception, TimeLimitExceeded) and args:
        ctx = current()
        record = ctx.store.get(args[0])
        if record is not None and record["status"] not in records.TERMINAL:
            _fail(ctx, args[0], f"Timed out: stopped after {exception.args[0]:g} s.")
