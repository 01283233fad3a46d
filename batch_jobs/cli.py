"""`ferry batch ...`: run and follow batch jobs from the command line, against the same Redis."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from batch_jobs import runner
from batch_jobs.sources import SourceError
from batch_jobs.store import FINISHED
from models.registry import UnknownModel


def _context():
    from tasks.context import WorkerContext
    from tasks.settings import Settings

    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.UsageError("Set FERRY_REDIS_URL (make dev prints it).")
    return WorkerContext.build(settings)


def _sender(ctx):
    from tasks.celery_app import create_celery
    from tasks.senders import CelerySender

    return CelerySender(create_celery(ctx.settings))


@click.group("batch")
def batch() -> None:
    """Batch precompute into the prediction cache."""


@batch.command("run")
@click.argument("model")
@click.argument("source")
@click.option("--version", "version", default=None, help="A version the model serves (default: its default).")
@click.option("--top-n", type=int, default=1000, show_default=True, help="With SOURCE `popular`.")
@click.option("--chunk-size", type=int, default=None, help="Inputs per chunk task.")
@click.option("--batch-size", type=int, default=None, help="Inputs per forward pass.")
@click.option("--ttl", "cache_ttl_s", type=int, default=None, help="Cache TTL in seconds (default: 3 days).")
@click.option("--local", is_flag=True, help="Run the chunks in this process instead of on the batch workers.")
def run(model, source, version, top_n, chunk_size, batch_size, cache_ttl_s, local) -> None:
    """Precompute MODEL's outputs for SOURCE: a .jsonl or .csv file, or `popular`."""
    ctx = _context()
    if source == "popular":
        described = {"type": "popular", "top_n": top_n}
    else:
        kind = Path(source).suffix.lower().lstrip(".")
        if kind not in ("jsonl", "csv"):
            raise click.UsageError("SOURCE must end in .jsonl or .csv, or be `popular`.")
        # As given: a relative path is looked for in the batch input folder, then here.
        described = {"type": kind, "path": source}
    try:
        job = runner.create_job(ctx, model=model, source=described, version=version, chunk_size=chunk_size,
                                batch_size=batch_size, cache_ttl_s=cache_ttl_s, origin="cli", confined=False)
    except SourceError as exc:
        raise click.UsageError(str(exc)) from None
    except runner.OptionError as exc:
        option = {"cache_ttl_s": "--ttl"}.get(exc.field, "--" + exc.field.replace("_", "-"))
        raise click.UsageError(f"{option}: {exc.message}") from None
    except UnknownModel as exc:
        raise click.UsageError(runner.unknown(exc, model, version)) from None
    click.echo(f"batch job {job['id']} ({model}, {source})")
    if local:
        pending: list[int] = []
        runner.plan_job(job["id"], ctx, lambda job_id, number: pending.append(number))
        with _bar(ctx, job["id"]) as bar:
            for number in pending:
                runner.run_chunk(job["id"], number, ctx)
                _update(bar, ctx, job["id"])
    else:
        sender = _sender(ctx)
        runner.plan_job(job["id"], ctx, sender.send_chunk)
        _follow(ctx, job["id"])
    _summary(ctx, job["id"])


def _bar(ctx, job_id):
    store = runner.job_store(ctx)
    return tqdm(total=store.progress(store.get(job_id))["total"], unit="row", dynamic_ncols=True, file=sys.stderr)


def _update(bar, ctx, job_id) -> dict:
    store = runner.job_store(ctx)
    job = store.get(job_id)
    progress = store.progress(job)
    # Rows read so far, and those settled: cached, failed, or found invalid (a total that
    # only grows while the source is read, where the valid count shrank as rows were refused).
    bar.total = progress["total"]
    bar.n = progress["done"] + progress["failed"] + progress["invalid"]
    bar.set_postfix(failed=progress["failed"], invalid=progress["invalid"], refresh=False)
    bar.refresh()
    return job


def _follow(ctx, job_id: str) -> None:
    with _bar(ctx, job_id) as bar:
        try:
            while _update(bar, ctx, job_id)["status"] not in FINISHED:
                time.sleep(0.5)
        except KeyboardInterrupt:
            click.echo(f"\nStopped following; the job runs on. `ferry batch cancel {job_id}` cancels it.")
            raise SystemExit(130) from None


def _summary(ctx, job_id: str) -> None:
    store = runner.job_store(ctx)
    job = store.get(job_id)
    progress = store.progress(job)
    click.echo(
        f"{job['status']}: {progress['done']} cached, {progress['failed']} failed, {progress['invalid']} invalid "
        f"of {progress['total']} rows; {progress['rate_per_s'] or 0:.1f} rows/s"
        + (f"; {progress['remaining']} rows not computed" if progress["remaining"] else "")
    )
    for error in store.errors(job_id)[:10]:
        click.echo(f"  line {error['line']}: {error['error']}")
    if job.get("error"):
        click.echo(f"  {job['error']}")
    if job["status"] != "succeeded":
        raise SystemExit(1)


@batch.command("status")
@click.argument("job_id")
def status(job_id: str) -> None:
    """Print a job as JSON."""
    ctx = _context()
    store = runner.job_store(ctx)
    job = store.get(job_id)
    if job is None:
        raise click.UsageError(f"No batch job {job_id}.")
    click.echo(json.dumps({**job, "progress": store.progress(job), "errors": store.errors(job_id)[:20]}, indent=2))


@batch.command("cancel")
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job."""
    ctx = _context()
    _unfinished(ctx, job_id, "there is nothing to cancel")
    click.echo(runner.cancel_job(job_id, ctx)["status"])


@batch.command("resume")
@click.argument("job_id")
@click.option("--follow/--no-follow", default=True)
def resume(job_id: str, follow: bool) -> None:
    """Dispatch a job's unfinished chunks again (after its worker died)."""
    ctx = _context()
    _unfinished(ctx, job_id, "only an unfinished job resumes")
    runner.resume_job(job_id, ctx, _sender(ctx).send_chunk)
    if follow:
        _follow(ctx, job_id)
        _summary(ctx, job_id)


def _unfinished(ctx, job_id: str, otherwise: str) -> dict:
    job = runner.job_store(ctx).get(job_id)
    if job is None:
        raise click.UsageError(f"No batch job {job_id}.")
    if job["status"] in FINISHED:
        raise click.ClickException(f"The job has finished ({job['status']}); {otherwise}.")
    return job
