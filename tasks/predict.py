"""The predict task: thin wrapper around `run_prediction`, which tests call directly."""
from __future__ import annotations

import json
import logging
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from models.base import checked_predict
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
        output = checked_predict(model, [json.loads(record["input"])])[0]
    except SoftTimeLimitExceeded:
        return _fail(ctx, prediction_id, f"Timed out after {spec.timeout_s:g} s.")
    except UnknownModel:
        return _fail(ctx, prediction_id, f"Model {record['model']!r} is not served any more.")
    except Exception as exc:  # the model's own failure is the prediction's result
        log.exception("prediction %s failed", prediction_id)
        return _fail(ctx, prediction_id, f"{type(exc).__name__}: {exc}")
    pipe = ctx.redis.pipeline(transaction=False)
    ctx.cache.set(record["cache_key"], output, spec.cache_ttl_s, pipe=pipe)
    pipe.execute()
    ctx.store.update(
        prediction_id, records.SUCCEEDED,
        output=json.dumps(output, separators=(",", ":")), finished_at=repr(time.time()),
    )
    return records.SUCCEEDED


def _fail(ctx: WorkerContext, prediction_id: str, message: str) -> str:
    ctx.store.update(prediction_id, records.FAILED, error=message, finished_at=repr(time.time()))
    return records.FAILED


@shared_task(name=PREDICT_TASK, ignore_result=True)
def predict(prediction_id: str) -> str:
    return run_prediction(prediction_id, current())
