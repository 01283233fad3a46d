"""Batch tasks: thin wrappers around `batch_jobs.runner`, on the batch queue."""
from __future__ import annotations

import logging

from celery import current_app, shared_task

from batch_jobs import runner
from batch_jobs.schedule import nightly_job
from batch_jobs.sources import SourceError
from models.registry import UnknownModel
from tasks.celery_app import BATCH_CHUNK_TASK, BATCH_NIGHTLY_TASK, BATCH_PLAN_TASK, BATCH_WATCHDOG_TASK
from tasks.context import current
from tasks.senders import CelerySender

log = logging.getLogger(__name__)


def _sender() -> CelerySender:
    return CelerySender(current_app)


@shared_task(name=BATCH_PLAN_TASK, ignore_result=True)
def plan(job_id: str) -> None:
    runner.plan_job(job_id, current(), _sender().send_chunk)


@shared_task(name=BATCH_CHUNK_TASK, ignore_result=True)
def chunk(job_id: str, number: int) -> str:
    return runner.run_chunk(job_id, number, current())


@shared_task(name=BATCH_NIGHTLY_TASK, ignore_result=True)
def nightly(name: str) -> str:
    ctx = current()
    options, origin = nightly_job(ctx.settings, name), f"nightly:{name}"
    try:
        job = runner.create_job(ctx, origin=origin, confined=False, **options)
    except (SourceError, UnknownModel, runner.OptionError) as exc:
        job = runner.record_refused(ctx, exc, origin=origin, **options)
        log.error("nightly batch job %s could not start: %s", name, job["error"])
        return job["id"]
    runner.plan_job(job["id"], ctx, _sender().send_chunk)
    return job["id"]


@shared_task(name=BATCH_WATCHDOG_TASK, ignore_result=True)
def watchdog() -> list[str]:
    return runner.resume_stale_jobs(current(), _sender().send_chunk)
