"""Batch jobs (admin): precompute a model's outputs for a known set of inputs into the cache."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from flask import Response, stream_with_context, url_for
from flask.views import MethodView
from flask_smorest import abort

from app.keys import ADMIN
from app.parsing import Blueprint
from app.resources.predictions import timestamp
from app.schemas import BatchJobCreateSchema, BatchJobSchema, ErrorSchema
from app.services import services
from batch_jobs import runner
from batch_jobs.sources import SourceError
from batch_jobs.store import FINISHED
from models.registry import UnknownModel, UnknownVersion

blp = Blueprint("batch_jobs", __name__, url_prefix="/batch-jobs",
                description="Batch precompute into the prediction cache (admin key required).")


def view(job: dict) -> dict:
    ferry = services()
    store = runner.job_store(ferry)
    return {
        "id": job["id"], "model": job["model"], "version": job["version"], "status": job["status"],
        "origin": job.get("origin"), "source": _shown_source(json.loads(job["source"]), ferry.settings.batch_inputs),
        "options": {key: int(job[key]) for key in ("chunk_size", "batch_size", "cache_ttl_s")},
        "progress": store.progress(job), "errors": store.errors(job["id"])[:20], "error": job.get("error"),
        "created_at": timestamp(job.get("created_at")), "started_at": timestamp(job.get("started_at")),
        "finished_at": timestamp(job.get("finished_at")),
    }


def _shown_source(source: dict, inputs: Path) -> dict:
    """A file source as the caller named it, relative to the batch input folder: the server's
    own directories are none of the API's business (a job from the command line may name a
    file elsewhere, which its operator gave)."""
    if "path" in source:
        with contextlib.suppress(ValueError):
            source = {**source, "path": str(Path(source["path"]).relative_to(inputs.resolve()))}
    return source


def job_or_404(job_id: str) -> dict:
    job = runner.job_store(services()).get(job_id) if job_id.isalnum() and len(job_id) == 32 else None
    if job is None:
        abort(404, message=f"No batch job with id {job_id!r}.")
    return job


@blp.route("")
class BatchJobs(MethodView):
    @blp.requires(ADMIN)
    @blp.response(200, BatchJobSchema(many=True))
    def get(self):
        """The most recent batch jobs, newest first."""
        store = runner.job_store(services())
        return [view(job) for job in map(store.get, store.list_ids()) if job]

    @blp.requires(ADMIN)
    @blp.arguments(BatchJobCreateSchema)
    @blp.response(202, BatchJobSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(422, schema=ErrorSchema, description="Unknown model or unusable source.")
    def post(self, body: dict):
        """Start a batch job; it is planned and run on the batch queue."""
        ferry = services()
        try:
            job = runner.create_job(ferry, origin="api", confined=True, **body)
        except UnknownModel as exc:
            field = "version" if isinstance(exc, UnknownVersion) else "model"
            abort(422, message=f"Unknown {field}.", errors={"json": {field: [
                runner.unknown(exc, body["model"], body.get("version"))]}})
        except SourceError as exc:
            abort(422, message="The source is not usable.", errors={"json": {"source": [str(exc)]}})
        except runner.OptionError as exc:
            abort(422, message="An option is out of range.", errors={"json": {exc.field: [exc.message]}})
        ferry.sender.send_plan(job["id"])
        return view(job), 202, {"Location": url_for("batch_jobs.BatchJobById", job_id=job["id"])}


@blp.route("/<job_id>")
class BatchJobById(MethodView):
    @blp.requires(ADMIN)
    @blp.response(200, BatchJobSchema)
    def get(self, job_id: str):
        """A job's status, progress (done, failed, invalid, rate, ETA), error sample and times."""
        return view(job_or_404(job_id))

    @blp.requires(ADMIN)
    @blp.response(202, BatchJobSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="The job has already finished.")
    def delete(self, job_id: str):
        """Cancel a job: chunks not started are skipped, running ones stop at their next batch."""
        job = job_or_404(job_id)
        if job["status"] in FINISHED:
            abort(409, message=f"The job has finished ({job['status']}); there is nothing to cancel.")
        return view(runner.cancel_job(job_id, services()))


@blp.route("/<job_id>/results")
class BatchJobResults(MethodView):
    @blp.requires(ADMIN)
    @blp.response(200, description=(
        "JSON lines, one for each row of the source in its order: {line, input, output} or {line, input, error}; "
        "input is null for a row that could not be read."), content_type="application/x-ndjson")
    def get(self, job_id: str):
        """Stream every row of the job's source with its output or its error, as JSON lines."""
        job_or_404(job_id)
        lines = (json.dumps(row, separators=(",", ":")) + "\n" for row in runner.results(job_id, services()))
        return Response(stream_with_context(lines), mimetype="application/x-ndjson")
