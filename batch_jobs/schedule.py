"""Nightly jobs, declared in `batch_jobs/nightly.yaml` (FERRY_NIGHTLY_JOBS_FILE), run by beat."""
from __future__ import annotations

from pathlib import Path

import yaml
from celery.schedules import crontab

from tasks.celery_app import BATCH_NIGHTLY_TASK, BATCH_QUEUE, BATCH_WATCHDOG_TASK, SWEEP_TASK
from tasks.devices import SWEEP_QUEUE
from tasks.settings import Settings

JOB_OPTIONS = ("model", "version", "source", "chunk_size", "batch_size", "cache_ttl_s")


def load_nightly(settings) -> dict[str, dict]:
    path = Path(settings.nightly_jobs_file)
    if not path.is_file():
        if path.resolve() != Path(Settings().nightly_jobs_file).resolve():
            raise ValueError(f"FERRY_NIGHTLY_JOBS_FILE={settings.nightly_jobs_file}: no such file.")
        return {}  # the shipped file removed: no nightly jobs
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    entries = document.get("jobs") if isinstance(document, dict) else None
    if not isinstance(entries or [], list):
        raise ValueError(f"{path}: `jobs` must be a list of jobs.")
    jobs = {}
    for entry in entries or []:
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: each job is a mapping (name, model, source, crontab), not {entry!r}.")
        missing = {"name", "model", "source", "crontab"} - set(entry)
        if missing:
            raise ValueError(f"{path}: nightly job {entry.get('name', '?')} lacks {sorted(missing)}")
        jobs[entry["name"]] = entry
    return jobs


def nightly_job(settings, name: str) -> dict:
    entry = load_nightly(settings)[name]
    job = {key: entry[key] for key in JOB_OPTIONS if key in entry}
    if "version" in job:  # YAML reads `version: 1` as a number
        job["version"] = str(job["version"])
    return job


def beat_schedule(settings) -> dict:
    schedule = {
        "batch-watchdog": {"task": BATCH_WATCHDOG_TASK, "schedule": settings.batch_watchdog_s,
                           "options": {"queue": BATCH_QUEUE}},
        # Re-sends predictions whose worker died mid-batch; every real-time worker, CPU or
        # GPU, consumes its queue, which kombu serves in turn with the prediction queues.
        # While every process is busy, sweeps wait: expiring with the interval, they would
        # pile up expired faster than they are fetched, and none would ever run.
        "prediction-sweeper": {"task": SWEEP_TASK, "schedule": settings.sweep_s,
                               "options": {"queue": SWEEP_QUEUE, "expires": settings.visibility_timeout_s}},
    }
    for name, entry in load_nightly(settings).items():
        try:
            minute, hour, day_of_month, month_of_year, day_of_week = str(entry["crontab"]).split()
            when = crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                           day_of_week=day_of_week)
            when.remaining_estimate(when.now())  # an out-of-range field is found only when it is used
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{settings.nightly_jobs_file}: nightly job {name}: crontab {entry['crontab']!r} is not "
                             f"\"minute hour day-of-month month day-of-week\" ({exc})") from None
        schedule[f"nightly-{name}"] = {
            "task": BATCH_NIGHTLY_TASK,
            "schedule": when,
            "args": [name],
            "options": {"queue": BATCH_QUEUE},
        }
    return schedule
