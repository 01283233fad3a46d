"""Batch jobs on fakeredis: sources, planning, chunks, counts, cancel, resume, the API."""
import dataclasses
import json

import pytest

from models.base import encode_output
from models.cache import input_digest

from batch_jobs import runner, sources
from batch_jobs.store import ERROR_SAMPLE, BatchJobStore
from models.declaration import parse_repository
from models.registry import Registry
from tasks.context import WorkerContext
from tasks.settings import Settings
from tests.auth import keyed_client
from tests.fake_models import declaration


@pytest.fixture
def inputs_dir(tmp_path):
    folder = tmp_path / "batch-inputs"
    folder.mkdir()
    return folder


@pytest.fixture
def ctx(fake_redis, tmp_path, inputs_dir):
    specs = parse_repository({"models": [declaration("picky", "Picky"), declaration("echo", "Echo")]})
    settings = Settings(redis_url="redis://unused:1/0", data_dir=str(tmp_path), batch_chunk_size=4)
    return WorkerContext.build(settings, fake_redis, Registry(specs))


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def run_inline(ctx, job_id):
    pending = []
    runner.plan_job(job_id, ctx, lambda _job, number: pending.append(number))
    for number in pending:
        runner.run_chunk(job_id, number, ctx)
    return pending


def test_jsonl_job_caches_valid_rows_and_reports_invalid_lines(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, "not json", {"x": 2}, [1, 2], {"y": 3}, "", {"x": 3},
                                          {"x": 4}, {"x": 5}])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"})
    chunks = run_inline(ctx, job["id"])
    store = runner.job_store(ctx)
    job = store.get(job["id"])
    assert job["status"] == "succeeded"
    assert len(chunks) == 2  # five valid rows, chunks of four
    progress = store.progress(job)
    assert (progress["total"], progress["valid"], progress["done"], progress["failed"], progress["invalid"]) == \
        (8, 5, 5, 0, 3)
    assert [error["line"] for error in store.errors(job["id"])] == [2, 4, 5]
    for x in (1, 2, 3, 4, 5):
        assert ctx.cache.get(ctx.cache.key("picky", "1", {"x": float(x)})) == {"double": 2.0 * x}
    assert 24 * 3600 < ctx.redis.ttl(ctx.cache.key("picky", "1", {"x": 1.0})) <= 3 * 24 * 3600


def test_one_bad_input_fails_alone(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, {"x": -1}, {"x": 2}])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"})
    run_inline(ctx, job["id"])
    store = runner.job_store(ctx)
    progress = store.progress(store.get(job["id"]))
    assert (progress["done"], progress["failed"]) == (2, 1)
    assert store.errors(job["id"]) == [{"line": 2, "error": "ValueError: x must not be negative"}]
    rows = list(runner.results(job["id"], ctx))
    assert [row.get("output") for row in rows] == [{"double": 2.0}, None, {"double": 4.0}]
    assert rows[1]["error"] == "ValueError: x must not be negative"


def test_csv_cells_are_typed_from_the_declaration(ctx, inputs_dir):
    (inputs_dir / "in.csv").write_text("x\n1.5\nabc\n\n2\nnan\ninf\n")
    job = runner.create_job(ctx, model="echo", source={"type": "csv", "path": "in.csv"})
    run_inline(ctx, job["id"])
    store = runner.job_store(ctx)
    progress = store.progress(store.get(job["id"]))
    assert (progress["done"], progress["invalid"]) == (2, 3)
    errors = {error["line"]: error["error"] for error in store.errors(job["id"])}
    assert sorted(errors) == [3, 6, 7]
    assert errors[6] == "Column 'x': 'nan' is not a finite number."


def test_csv_booleans_are_words(ctx, inputs_dir, fake_redis):
    from batch_jobs.sources import csv_rows
    from models.declaration import parse_repository as parse

    spec = parse({"models": [declaration("b", "Echo", inputs={"flag": {"type": "boolean"}})]})[0]
    (inputs_dir / "b.csv").write_text("flag\ntrue\nFALSE\nyes\n")
    rows = list(csv_rows(inputs_dir / "b.csv", spec))
    assert [json.loads(row) for _, row in rows[:2]] == [{"flag": True}, {"flag": False}]
    assert "not a boolean" in rows[2][1].message


def test_chunks_run_twice_are_counted_once(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(10)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    chunks = run_inline(ctx, job["id"])
    assert runner.run_chunk(job["id"], chunks[0], ctx) == "skipped"  # the job has finished
    store = runner.job_store(ctx)
    assert store.progress(store.get(job["id"]))["done"] == 10
    assert store.runs(job["id"]) == {0: 1, 1: 1, 2: 1}


def test_resume_dispatches_only_unfinished_chunks(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(10)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    dispatched = []
    runner.plan_job(job["id"], ctx, lambda _job, number: dispatched.append(number))
    runner.run_chunk(job["id"], 1, ctx)  # only chunk 1 finished before the "crash"
    again = []
    runner.resume_job(job["id"], ctx, lambda _job, number: again.append(number))
    assert dispatched == [0, 1, 2] and again == [0, 2]
    for number in again:
        runner.run_chunk(job["id"], number, ctx)
    store = runner.job_store(ctx)
    assert store.get(job["id"])["status"] == "succeeded"
    assert store.runs(job["id"]) == {0: 1, 1: 1, 2: 1}


def test_stale_jobs_are_resumed_by_the_watchdog(ctx, inputs_dir, monkeypatch):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(3)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    runner.plan_job(job["id"], ctx, lambda *_: None)
    assert runner.resume_stale_jobs(ctx, lambda *_: None) == []
    runner.job_store(ctx).set(job["id"], progress_at="1.0")
    sent = []
    assert runner.resume_stale_jobs(ctx, lambda _job, number: sent.append(number)) == [job["id"]]
    assert sent == [0]


def test_cancel_sticks_and_stops_chunks(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(10)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    pending = []
    runner.plan_job(job["id"], ctx, lambda _job, number: pending.append(number))
    runner.run_chunk(job["id"], 0, ctx)
    assert runner.cancel_job(job["id"], ctx)["status"] == "canceled"
    assert runner.run_chunk(job["id"], 1, ctx) == "skipped"
    store = runner.job_store(ctx)
    progress = store.progress(store.get(job["id"]))
    # The rows of the chunks that never ran were never checked, and say so.
    assert (progress["total"], progress["done"], progress["remaining"], progress["invalid"]) == (10, 4, 6, 0)
    runner.resume_job(job["id"], ctx, lambda *_: pytest.fail("a canceled job must not resume"))
    assert store.get(job["id"])["status"] == "canceled"


def test_unreadable_source_fails_the_job_with_a_reason(ctx, inputs_dir):
    path = write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    path.unlink()
    runner.plan_job(job["id"], ctx, lambda *_: None)
    failed = runner.job_store(ctx).get(job["id"])
    assert failed["status"] == "failed" and "Could not read the source" in failed["error"]


@pytest.mark.parametrize("source, complaint", [
    ({"type": "jsonl", "path": "../secret.jsonl"}, "leaves"),
    ({"type": "jsonl", "path": "/etc/passwd"}, "relative"),
    ({"type": "jsonl", "path": "missing.jsonl"}, "No such file"),
    ({"type": "xml", "path": "a.xml"}, "Source type"),
    ({"type": "popular", "top_n": 0}, "top_n"),
])
def test_bad_sources_are_refused_up_front(ctx, source, complaint):
    with pytest.raises(sources.SourceError, match=complaint):
        runner.create_job(ctx, model="echo", source=source)


def count(counter, redis, model: str, value) -> None:
    counter.add(redis, model, "1", {"x": value}, f"{model}:{value}")
    counter.flush()


def test_popular_inputs_are_counted_in_bounded_memory(fake_redis):
    counter = sources.PopularityCounter("ferry:", max_entries=3, max_input_bytes=50, flush_every_s=3600)
    for value in [1, 1, 1, 2, 2, 3, 4, 5, 6] * 8:
        count(counter, fake_redis, "m", value)
    count(counter, fake_redis, "m", "y" * 100)  # too large to count
    members = fake_redis.zrevrange("ferry:popular:m:1", 0, -1, withscores=True)
    assert len(members) <= 3
    assert members[0] == ('{"x":1}', 24.0)


def test_popular_source_precomputes_the_top_inputs(ctx):
    counter = sources.PopularityCounter("ferry:", 100, 4096, flush_every_s=3600)
    for value in [1.0, 1.0, 1.0, 2.0, 2.0, 3.0]:
        count(counter, ctx.redis, "echo", value)
    job = runner.create_job(ctx, model="echo", source={"type": "popular", "top_n": 2})
    run_inline(ctx, job["id"])
    assert [row["input"] for row in runner.results(job["id"], ctx)] == [{"x": 1.0}, {"x": 2.0}]


def test_a_plan_made_anew_after_its_planner_died_loses_no_input(ctx):
    counter = sources.PopularityCounter("ferry:", 100, 4096, flush_every_s=3600)
    for value in [1.0, 1.0, 1.0, 2.0, 2.0, 3.0]:
        count(counter, ctx.redis, "echo", value)
    job = runner.create_job(ctx, model="echo", source={"type": "popular", "top_n": 3}, chunk_size=1,
                            batch_size=1)
    store = runner.job_store(ctx)

    def die_after_the_first_chunk(job_id, number):
        runner.run_chunk(job_id, number, ctx)
        raise SystemExit("the planner's worker is killed")

    with pytest.raises(SystemExit):
        runner.plan_job(job["id"], ctx, die_after_the_first_chunk)
    assert store.get(job["id"])["status"] == "planning" and store.done_chunks(job["id"])
    for _ in range(3):  # the ranking moves before the plan is made again: 3.0 would be first
        count(counter, ctx.redis, "echo", 3.0)
    pending = []
    runner.resume_job(job["id"], ctx, lambda _job, number: pending.append(number))
    for number in pending:
        runner.run_chunk(job["id"], number, ctx)
    assert store.get(job["id"])["status"] == "succeeded"
    # The plan made again splits the inputs its first attempt read, so chunk 0 is still 1.0.
    rows = list(runner.results(job["id"], ctx))
    assert [(row["input"]["x"], row["output"]["echo"]) for row in rows] == [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    assert store.runs(job["id"]) == {0: 1, 1: 1, 2: 1}  # nothing computed twice
    assert store.progress(store.get(job["id"]))["done"] == 3


def test_results_give_every_row_its_own_error_past_the_jobs_sample(ctx, inputs_dir):
    rows = [{"x": "bad"}] * 120 + [{"x": -1}] * 10 + [{"x": 1}] * 10 + ["\xff not UTF-8"] * 130
    (inputs_dir / "in.jsonl").write_bytes(b"".join(
        (row.encode("latin-1") if isinstance(row, str) else json.dumps(row).encode()) + b"\n" for row in rows))
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=50)
    run_inline(ctx, job["id"])
    store = runner.job_store(ctx)
    assert len(store.errors(job["id"])) == ERROR_SAMPLE < 260
    results = list(runner.results(job["id"], ctx))
    assert [row["line"] for row in results] == list(range(1, 271))
    assert {row["error"] for row in results[:120]} == {'{"x": ["Not a valid number."]}'}
    assert all("must not be negative" in row["error"] for row in results[120:130])
    assert all(row["output"] == {"double": 2} for row in results[130:140])
    assert all(row["input"] is None and "UTF-8" in row["error"] for row in results[140:])


def test_a_cancel_stops_the_planner(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(1000)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=10,
                            batch_size=10)
    store = runner.job_store(ctx)
    dispatched = []

    def cancel_at_once(job_id, number):
        dispatched.append(number)
        runner.cancel_job(job_id, ctx)

    runner.plan_job(job["id"], ctx, cancel_at_once)
    job = store.get(job["id"])
    assert job["status"] == "canceled" and dispatched == [0]
    assert store.chunk_items(job["id"], 1) is None  # nothing stored past the cancel
    progress = store.progress(job)
    assert (progress["total"], progress["chunks_total"], progress["remaining"]) == (10, 1, 10)


def test_a_file_plan_made_again_reads_the_same_file_or_fails(ctx, inputs_dir):
    import os

    path = inputs_dir / "in.jsonl"
    store = runner.job_store(ctx)

    def die_after_the_first_chunk(job_id, number):
        raise SystemExit("the planner's worker is killed")

    outcomes = []
    for edited in (False, True):
        write_jsonl(path, [{"x": i} for i in range(6)])
        job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=2,
                                batch_size=2)
        with pytest.raises(SystemExit):
            runner.plan_job(job["id"], ctx, die_after_the_first_chunk)
        if edited:  # a line inserted at the top would shift every chunk not yet written
            write_jsonl(path, [{"x": -1}] + [{"x": i} for i in range(6)])
            os.utime(path, ns=(1, 1))
        pending: list[int] = []
        runner.resume_job(job["id"], ctx, lambda _job, number, pending=pending: pending.append(number))
        for number in pending:
            runner.run_chunk(job["id"], number, ctx)
        job = store.get(job["id"])
        outcomes.append((job["status"], job.get("error"), store.progress(job)["done"]))
    assert outcomes == [
        ("succeeded", None, 6),
        ("failed", "Could not read the source: the file changed after this job began reading it; start a new "
                   "job", 0)]


# --- the HTTP API ---------------------------------------------------------------------

BOOTSTRAP = "bootstrap-admin-key-for-tests"
ADMIN = {"Authorization": f"Bearer {BOOTSTRAP}"}


@pytest.fixture
def admin_app(fake_redis, sender, tmp_path, inputs_dir):
    from app import create_app

    return create_app({"redis_url": "redis://unused:1/0", "admin_key": BOOTSTRAP, "data_dir": str(tmp_path)},
                      redis_client=fake_redis, sender=sender)


def test_batch_routes_are_closed_without_an_admin_key(app):
    assert app.test_client().get("/batch-jobs").status_code == 401
    response = keyed_client(app, scopes=["predict"]).get("/batch-jobs")
    assert response.status_code == 403 and "admin" in response.json["message"]


def test_batch_routes_need_the_right_key(admin_app):
    client = admin_app.test_client()
    assert client.get("/batch-jobs").status_code == 401
    assert client.get("/batch-jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/batch-jobs", headers=ADMIN).json == []  # the bootstrap key, FERRY_ADMIN_KEY


def test_batch_job_lifecycle_over_http(admin_app, sender, inputs_dir):
    write_jsonl(inputs_dir / "digits.jsonl", [{"pixels": [0] * 64}, {"pixels": [1]}])
    client = admin_app.test_client()
    created = client.post("/batch-jobs", json={"model": "digits", "source": {"type": "jsonl", "path": "digits.jsonl"},
                                               "chunk_size": 10}, headers=ADMIN)
    assert created.status_code == 202, created.json
    job_id = created.json["id"]
    assert created.headers["Location"] == f"/batch-jobs/{job_id}"
    assert sender.sent == [{"task": "ferry.batch.plan", "args": [job_id], "queue": "batch", "time_limits": None,
                            "countdown": None}]
    assert created.json["options"] == {"chunk_size": 10, "batch_size": 64, "cache_ttl_s": 3 * 24 * 3600}
    assert created.json["source"] == {"type": "jsonl", "path": "digits.jsonl"}  # not the server's directories
    listed = client.get("/batch-jobs", headers=ADMIN).json
    assert [job["id"] for job in listed] == [job_id]
    assert client.get(f"/batch-jobs/{job_id}", headers=ADMIN).json["status"] == "queued"
    canceled = client.delete(f"/batch-jobs/{job_id}", headers=ADMIN)
    assert canceled.status_code == 202 and canceled.json["status"] == "canceled"
    assert client.delete(f"/batch-jobs/{job_id}", headers=ADMIN).status_code == 409
    assert client.get(f"/batch-jobs/{'0' * 32}", headers=ADMIN).status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"model": "nope", "source": {"type": "popular"}}, "model"),
    ({"model": "digits", "source": {"type": "jsonl", "path": "../../etc/passwd"}}, "source"),
    ({"model": "digits", "source": {"type": "popular"}, "chunk_size": 0}, "chunk_size"),
    ({"model": "digits", "source": {"type": "popular"}, "chunk_size": 1.5}, "chunk_size"),
    ({"model": "digits", "source": {"type": "popular"}, "cache_ttl_s": 0}, "cache_ttl_s"),
    ({"model": "digits", "source": {"type": "popular", "top_n": True}}, "source"),
    ({"model": "digits", "source": {"type": "jsonl", "path": "a\u0000b.jsonl"}}, "source"),
    ({"model": "digits", "version": "9", "source": {"type": "popular"}}, "version"),
    # A program on the other side of a pipe takes what it declared, no more.
    ({"model": "textstats", "source": {"type": "popular"}, "batch_size": 33}, "batch_size"),
    ({"model": "digits"}, "source"),
])
def test_bad_batch_requests_are_422(admin_app, body, field):
    response = admin_app.test_client().post("/batch-jobs", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert list(response.json["errors"]["json"]) == [field], response.json


def test_a_job_runs_the_version_it_names_and_takes_the_batches_its_model_allows(admin_app):
    ferry = admin_app.extensions["ferry"]
    client = admin_app.test_client()
    pinned = client.post("/batch-jobs", json={"model": "digits", "version": "1.0.0", "source": {"type": "popular"},
                                              "batch_size": 4096}, headers=ADMIN)
    assert pinned.status_code == 202 and pinned.json["version"] == "1.0.0"
    assert pinned.json["options"]["batch_size"] == 4096  # a model in the worker's process: as large as asked
    job = runner.create_job(ferry, model="textstats", source={"type": "popular"})
    assert (job["batch_size"], runner.create_job(ferry, model="pi", source={"type": "popular"})["batch_size"]) == \
        ("32", "32")


def test_a_nightly_job_that_cannot_start_is_recorded_failed_with_its_reason(ctx, tmp_path, monkeypatch):
    import dataclasses

    from tasks import batch

    path = tmp_path / "nightly.yaml"
    path.write_text("""jobs:
  - {name: no-file, model: echo, source: {type: jsonl, path: missing.jsonl}, crontab: "0 2 * * *"}
  - {name: no-model, model: nope, source: {type: popular}, chunk_size: 10, crontab: "0 2 * * *"}
  - {name: no-version, model: echo, version: "9", source: {type: popular}, crontab: "0 2 * * *"}
  - {name: too-long, model: echo, source: {type: popular}, cache_ttl_s: 0, crontab: "0 2 * * *"}
""")
    monkeypatch.setattr(ctx, "settings", dataclasses.replace(ctx.settings, nightly_jobs_file=str(path)))
    monkeypatch.setattr(batch, "current", lambda: ctx)
    store = runner.job_store(ctx)
    jobs = [store.get(batch.nightly.run(name)) for name in ("no-file", "no-model", "no-version", "too-long")]
    assert [(job["status"], job["origin"], job["error"]) for job in jobs] == [
        ("failed", "nightly:no-file", "No such file: missing.jsonl"),
        ("failed", "nightly:no-model", "No model named 'nope'."),
        ("failed", "nightly:no-version", "Model 'echo' serves no version '9'."),
        ("failed", "nightly:too-long", "cache_ttl_s: Must be an integer from 60 to 7776000."),
    ]
    assert jobs[1]["chunk_size"] == "10" and store.list_ids()[0] == jobs[-1]["id"]


@pytest.mark.parametrize("options, message", [
    (["--ttl", "0"], "--ttl: Must be an integer from 60 to 7776000."),
    (["--batch-size", "-1"], "--batch-size: Must be an integer from 1 to 4096."),
    (["--version", "9"], "Model 'echo' serves no version '9'."),
])
def test_the_command_line_refuses_what_the_api_refuses(ctx, inputs_dir, monkeypatch, options, message):
    from click.testing import CliRunner

    from batch_jobs import cli

    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}])
    monkeypatch.setattr(cli, "_context", lambda: ctx)
    result = CliRunner().invoke(cli.batch, ["run", "echo", "in.jsonl", "--local", *options])
    assert result.exit_code == 2 and message in result.output, result.output
    assert runner.job_store(ctx).list_ids() == []


def test_results_stream_as_json_lines(admin_app, fake_redis, inputs_dir):
    ferry = admin_app.extensions["ferry"]
    write_jsonl(inputs_dir / "m.jsonl", [{"text": "a"}, {"text": "b"}])
    job = runner.create_job(ferry, model="minilm", source={"type": "jsonl", "path": "m.jsonl"})
    runner.plan_job(job["id"], ferry, lambda *_: None)
    ferry.cache.set(ferry.cache.key("minilm", "1.0.0", {"text": "a", "normalize": True}), encode_output({"embedding": [1]}), 60)
    response = admin_app.test_client().get(f"/batch-jobs/{job['id']}/results", headers=ADMIN)
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    # The input as the file gave it; the output found by its validated form's digest (defaults applied).
    assert lines[0] == {"line": 1, "input": {"text": "a"}, "output": {"embedding": [1]}}
    assert lines[1]["line"] == 2 and "error" in lines[1]


def test_nightly_schedule_comes_from_the_configuration(tmp_path):
    from batch_jobs.schedule import beat_schedule, nightly_job

    path = tmp_path / "nightly.yaml"
    path.write_text("jobs:\n  - {name: n1, model: minilm, source: {type: popular, top_n: 5}, crontab: '30 3 * * *'}\n")
    settings = Settings(nightly_jobs_file=str(path))
    schedule = beat_schedule(settings)
    entry = schedule["nightly-n1"]
    assert entry["task"] == "ferry.batch.nightly" and entry["args"] == ["n1"]
    assert entry["schedule"].hour == {3} and entry["schedule"].minute == {30}
    assert "batch-watchdog" in schedule
    assert nightly_job(settings, "n1") == {"model": "minilm", "source": {"type": "popular", "top_n": 5}}
    assert "nightly-popular-minilm" in beat_schedule(Settings())


def test_first_chunks_grow_from_one_batch_so_workers_start_early(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": n} for n in range(20)])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=8,
                            batch_size=2)
    chunks = run_inline(ctx, job["id"])
    store = runner.job_store(ctx)
    assert [len(store.chunk_items(job["id"], number)) for number in chunks] == [2, 4, 8, 6]
    assert store.progress(store.get(job["id"]))["done"] == 20
    rows = list(runner.results(job["id"], ctx))
    assert [row["line"] for row in rows] == list(range(1, 21))
    assert all(row["output"] == {"double": 2.0 * row["input"]["x"]} for row in rows)


@pytest.mark.parametrize("planned_by", ["older Ferry, with digests", "older Ferry, without digests"])
def test_chunks_an_older_ferry_planned_still_run(ctx, inputs_dir, planned_by):
    # An older planner validated rows itself and stored [line, validated input, digest?].
    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, {"x": 2}])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"})
    runner.plan_job(job["id"], ctx, lambda *_: None)
    store = runner.job_store(ctx)
    validated = [[1, {"x": 1.0}], [2, {"x": 2.0}]]
    if "with digests" in planned_by:
        validated = [[line, item, input_digest(item)] for line, item in validated]
    store.redis.delete(store.key(job["id"], "rows", 0))
    store.redis.set(store.key(job["id"], "chunk", 0), json.dumps(validated))
    runner.run_chunk(job["id"], 0, ctx)
    assert ctx.cache.get(ctx.cache.key("picky", "1", {"x": 2.0})) == {"double": 4.0}
    assert [row["output"] for row in runner.results(job["id"], ctx)] == [{"double": 2.0}, {"double": 4.0}]
    assert store.progress(store.get(job["id"]))["done"] == 2


def test_rows_are_checked_on_the_workers_and_counted_as_chunks_run(ctx, inputs_dir):
    path = inputs_dir / "in.jsonl"
    path.write_bytes(b'{"x": 1}\n{"x": "one"}\n{"x": "\xff"}\n\n{"x": 2}\n{"x": 3}\n')
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=2)
    pending = []
    runner.plan_job(job["id"], ctx, lambda _job, number: pending.append(number))
    store = runner.job_store(ctx)
    planned = store.progress(store.get(job["id"]))
    # Line 3 is not UTF-8: unreadable, found while planning; line 2 is refused by the schema,
    # found when its chunk runs.
    assert (planned["total"], planned["valid"], planned["invalid"]) == (5, 4, 1)
    assert [item[0] for item in store.chunk_items(job["id"], 0)] == [1, 2]
    for number in pending:
        runner.run_chunk(job["id"], number, ctx)
    progress = store.progress(store.get(job["id"]))
    assert (progress["total"], progress["valid"], progress["done"], progress["invalid"]) == (5, 3, 3, 2)
    assert sorted(error["line"] for error in store.errors(job["id"])) == [2, 3]
    assert "UTF-8" in next(error["error"] for error in store.errors(job["id"]) if error["line"] == 3)
    # Every row in the results: refused and unreadable ones with their reasons.
    rows = list(runner.results(job["id"], ctx))
    assert [(row["line"], row["input"], "output" in row) for row in rows] == [
        (1, {"x": 1}, True), (2, {"x": "one"}, False), (3, None, False), (5, {"x": 2}, True), (6, {"x": 3}, True)]
    assert "UTF-8" in rows[2]["error"] and rows[1]["error"] == store.errors(job["id"])[0]["error"]


def test_a_job_keeps_the_version_it_was_created_for_and_fails_clearly_once_it_is_gone(fake_redis, tmp_path,
                                                                                          inputs_dir):
    specs = parse_repository({"models": [declaration("echo", "Echo", version="1"),
                                         declaration("echo", "Echo", version="2", default=True)]})
    settings = Settings(redis_url="redis://unused:1/0", data_dir=str(tmp_path), batch_chunk_size=4)
    ctx = WorkerContext.build(settings, fake_redis, Registry(specs))
    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, {"x": 2}])
    store = runner.job_store(ctx)
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    assert job["version"] == "2"
    # The repository's default moves to version 1 (a new deployment) before the job runs.
    ctx.registry = Registry(parse_repository({"models": [declaration("echo", "Echo", version="1", default=True),
                                                         declaration("echo", "Echo", version="2")]}))
    run_inline(ctx, job["id"])
    assert store.get(job["id"])["status"] == "succeeded"
    assert ctx.cache.get(ctx.cache.key("echo", "2", {"x": 1.0}))["echo"] == 1.0
    assert ctx.cache.get(ctx.cache.key("echo", "1", {"x": 1.0})) is None
    assert [row["output"]["echo"] for row in runner.results(job["id"], ctx)] == [1.0, 2.0]

    gone = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    ctx.registry = Registry(parse_repository({"models": [declaration("echo", "Echo", version="2")]}))
    run_inline(ctx, gone["id"])
    failed = store.get(gone["id"])
    assert failed["status"] == "failed" and failed["error"] == "Model 'echo' version '1' is not served any more."
    # Version 2 goes too. The finished job's outputs are still read (its chunks kept their
    # digests); rows of a chunk that never ran cannot be checked any more, and say why.
    ctx.registry = Registry(parse_repository({"models": [declaration("echo", "Echo", version="2", default=True)]}))
    unrun = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    runner.plan_job(unrun["id"], ctx, lambda *_: None)
    ctx.registry = Registry(parse_repository({"models": [declaration("echo", "Echo", version="1")]}))
    assert [row["output"]["echo"] for row in runner.results(job["id"], ctx)] == [1.0, 2.0]
    reason = "Model 'echo' version '2' is not served any more."
    assert list(runner.results(unrun["id"], ctx)) == [{"line": 1, "input": {"x": 1}, "error": reason},
                                                      {"line": 2, "input": {"x": 2}, "error": reason}]


def test_the_collector_is_paused_while_a_chunk_runs_and_restored_after(ctx, inputs_dir, monkeypatch):
    import gc

    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, {"x": 2}])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"})
    seen = []
    predict = ctx.pool.predict
    monkeypatch.setattr(ctx.pool, "predict", lambda *args, **kw: seen.append(gc.isenabled()) or predict(*args, **kw))
    assert gc.isenabled()
    run_inline(ctx, job["id"])
    assert seen == [False] and gc.isenabled()
    gc.disable()  # a caller that had paused it keeps it paused
    try:
        with runner.paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(KeyError), runner.paused_gc():
        {}["missing"]
    assert gc.isenabled()


def test_counts_stay_whole_while_chunks_run_during_planning(ctx, inputs_dir):
    # Chunks run as soon as they are dispatched, while the planner still reads: refused rows
    # are counted against rows already planned, never below zero.
    write_jsonl(inputs_dir / "in.jsonl", [{"x": "bad"}] * 8 + [{"x": i} for i in range(8)])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=4,
                            batch_size=4)
    store = runner.job_store(ctx)
    seen = []

    def run_now(job_id, number):
        runner.run_chunk(job_id, number, ctx)
        seen.append(store.progress(store.get(job_id)))

    runner.plan_job(job["id"], ctx, run_now)
    assert [(p["total"], p["valid"], p["invalid"], p["done"]) for p in seen] == \
        [(4, 0, 4, 0), (8, 0, 8, 0), (12, 4, 8, 4), (16, 8, 8, 8)]
    assert store.get(job["id"])["status"] == "succeeded"


def test_a_chunk_run_twice_lists_its_errors_once(ctx, inputs_dir, monkeypatch):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, {"x": "bad"}, {"x": -1}, {"x": 2}])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=3)
    runner.plan_job(job["id"], ctx, lambda *_: None)
    store = runner.job_store(ctx)
    assert runner.run_chunk(job["id"], 0, ctx) == "done"
    # A second run that had started before the first recorded the chunk (a redelivery).
    monkeypatch.setattr(BatchJobStore, "is_chunk_done", lambda *_: False)
    assert runner.run_chunk(job["id"], 0, ctx) == "done"
    assert [error["line"] for error in store.errors(job["id"])] == [2, 3]
    assert store.progress(store.get(job["id"]))["invalid"] == 1


def test_a_chunk_a_live_run_holds_is_not_run_again_until_a_resume_takes_that_run_for_dead(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(3)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    runner.plan_job(job["id"], ctx, lambda *_: None)
    store = runner.job_store(ctx)
    assert store.claim_chunk(job["id"], 0, 300) == 1  # a run on another worker, still going
    # Its message delivered again (the visibility timeout passed): nothing is run, nor counted.
    assert runner.run_chunk(job["id"], 0, ctx) == "running elsewhere"
    assert store.runs(job["id"]) == {0: 1} and store.get(job["id"])["status"] == "running"
    pending: list[int] = []
    runner.resume_job(job["id"], ctx, lambda _job, number: pending.append(number))  # that run is taken for dead
    assert pending == [0] and runner.run_chunk(job["id"], 0, ctx) == "done"
    assert store.runs(job["id"]) == {0: 2} and store.get(job["id"])["status"] == "succeeded"
    assert not ctx.redis.exists(f"ferry:batch:{job['id']}:running:0")


def test_a_plan_task_delivered_again_while_its_planner_reads_leaves_the_source_to_it(ctx, inputs_dir):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(3)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    store = runner.job_store(ctx)
    assert store.claim(job["id"], "plan", 300)  # the first planner, still reading
    dispatched: list[int] = []
    runner.plan_job(job["id"], ctx, lambda _job, number: dispatched.append(number))
    assert dispatched == [] and store.get(job["id"]).get("n_chunks") is None
    runner.resume_job(job["id"], ctx, lambda _job, number: dispatched.append(number))  # it is taken for dead
    assert dispatched == [0] and store.get(job["id"])["n_chunks"] == "1"
    assert not ctx.redis.exists(f"ferry:batch:{job['id']}:running:plan")
    # A planner taken for dead that ends after all lets go of its own claim only.
    assert store.claim(job["id"], "plan", 300, token="successor")
    store.release_own(job["id"], "plan", "taken-for-dead")
    assert ctx.redis.get(f"ferry:batch:{job['id']}:running:plan") == "successor"


def test_a_chunk_that_took_its_worker_down_three_times_fails_its_rows_and_the_job_finishes(ctx, inputs_dir):
    from tasks.predict import MAX_ATTEMPTS

    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, {"x": "bad"}, {"x": 2}, {"x": 3}, {"x": 4}, {"x": 5}])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=3)
    runner.plan_job(job["id"], ctx, lambda *_: None)
    store = runner.job_store(ctx)
    # Runs that started and never recorded an outcome: their worker died under them.
    for _ in range(MAX_ATTEMPTS):
        store.count_run(job["id"], 0)
    for _ in range(MAX_ATTEMPTS - 1):
        store.count_run(job["id"], 1)
    assert [runner.run_chunk(job["id"], number, ctx) for number in (0, 1)] == ["done", "done"]
    job = store.get(job["id"])
    assert job["status"] == "succeeded"
    assert {k: store.progress(job)[k] for k in ("done", "failed", "invalid", "remaining")} == \
        {"done": 3, "failed": 2, "invalid": 1, "remaining": 0}
    message = f"Not computed: the worker stopped while running this row's chunk, {MAX_ATTEMPTS} times."
    assert [(error["line"], error["error"] == message) for error in store.errors(job["id"])] == \
        [(1, True), (2, False), (3, True)]
    results = {row["line"]: row for row in runner.results(job["id"], ctx)}
    assert results[1]["error"] == message and "output" not in results[1]
    assert results[4]["output"] == {"double": 6}


def test_a_job_that_cached_nothing_from_its_rows_fails_and_an_empty_source_succeeds(ctx, inputs_dir):
    write_jsonl(inputs_dir / "none-fit.jsonl", [{"x": -1}, {"x": "bad"}, "not json"])
    (inputs_dir / "empty.jsonl").write_text("\n")
    store = runner.job_store(ctx)
    outcomes = []
    for name in ("none-fit.jsonl", "empty.jsonl"):
        job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": name})
        run_inline(ctx, job["id"])
        job = store.get(job["id"])
        outcomes.append((job["status"], job.get("error")))
    assert outcomes == [
        ("failed", "Nothing was cached: of 3 rows, 2 were invalid and 1 failed in the model; the job's errors "
                   "list the first of them."),
        ("succeeded", None)]


def test_a_byte_order_mark_bad_bytes_and_records_over_several_lines_are_read_as_rows(fake_redis, tmp_path,
                                                                                      inputs_dir):
    inputs = {"x": {"type": "number", "required": True}, "note": {"type": "string"}}
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0", data_dir=str(tmp_path)), fake_redis,
                              Registry(parse_repository({"models": [declaration("notes", "Echo", inputs=inputs)]})))
    (inputs_dir / "in.jsonl").write_bytes(b'\xef\xbb\xbf{"x": 1}\r\n  {"x": 2, "note": "\xff"}\n{"x": 3}\n')
    (inputs_dir / "in.csv").write_bytes(b'\xef\xbb\xbfx,note\n1,"two\nlines"\n2,\xff\n3,ok\n')
    store = runner.job_store(ctx)
    jobs = []
    for name, refused_line in (("in.jsonl", 2), ("in.csv", 4)):
        job = runner.create_job(ctx, model="notes", source={"type": name.rsplit(".")[1], "path": name})
        jobs.append(job["id"])
        run_inline(ctx, job["id"])
        progress = store.progress(store.get(job["id"]))
        assert (progress["done"], progress["invalid"]) == (2, 1), name
        (error,) = store.errors(job["id"])
        assert error["line"] == refused_line and "UTF-8" in error["error"], name
    jsonl_job, csv_job = jobs
    assert "byte 21 of the line" in store.errors(jsonl_job)[0]["error"]  # counted from the line's start
    assert [(row["line"], row["input"]) for row in runner.results(csv_job, ctx)] == \
        [(2, {"x": 1.0, "note": "two\nlines"}), (4, None), (5, {"x": 3.0, "note": "ok"})]


def test_csv_records_are_numbered_by_their_first_line_and_odd_records_are_bad_rows(fake_redis, tmp_path,
                                                                                  inputs_dir):
    inputs = {"x": {"type": "number", "required": True}, "note": {"type": "string", "max_length": 300_000},
              "v": {"type": "array", "items": "number"}}
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0", data_dir=str(tmp_path)), fake_redis,
                              Registry(parse_repository({"models": [declaration("notes", "Echo", inputs=inputs)]})))
    long_note = "n" * 200_000  # past csv's own limit of 128 KiB a cell
    (inputs_dir / "in.csv").write_text(
        f'\nx,note,v\n\n1,{long_note},\n2,ok,[1\n\n3,"two\nlines",[3]\n4,a,,extra\n5,{"n" * (17 * 2**20)},\n6,,,,\n')
    job = runner.create_job(ctx, model="notes", source={"type": "csv", "path": "in.csv"})
    run_inline(ctx, job["id"])
    store = runner.job_store(ctx)
    progress = store.progress(store.get(job["id"]))
    assert (progress["total"], progress["done"], progress["invalid"]) == (6, 3, 3)
    errors = {error["line"]: error["error"] for error in store.errors(job["id"])}
    assert [(row["line"], row.get("error")) for row in runner.results(job["id"], ctx)] == \
        [(4, None), (5, errors[5]), (7, None), (9, errors[9]), (10, errors[10]), (11, None)]
    assert errors[5].startswith("Column 'v': not valid JSON")  # and line 11's trailing commas are nothing
    assert errors[9] == "The row has 4 cells; the header names 3 columns."
    assert errors[10].startswith("Not readable as CSV: field larger than field limit")


def test_a_chunk_cut_short_by_a_cancel_records_what_it_cached(ctx, inputs_dir, monkeypatch):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": i} for i in range(10)])
    job = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"}, chunk_size=4,
                            batch_size=2)
    runner.plan_job(job["id"], ctx, lambda *_: None)
    store = runner.job_store(ctx)
    assert [len(store.chunk_items(job["id"], n)) for n in (0, 1, 2)] == [2, 4, 4]  # chunks grow from one batch
    predict = ctx.pool.predict

    def cancel_after_the_first_batch(*args, **kw):
        outputs = predict(*args, **kw)
        runner.cancel_job(job["id"], ctx)
        return outputs

    monkeypatch.setattr(ctx.pool, "predict", cancel_after_the_first_batch)
    assert runner.run_chunk(job["id"], 0, ctx) == "done"
    store.set(job["id"], status="running")  # the cancel is meant for the second chunk, of two batches
    assert runner.run_chunk(job["id"], 1, ctx) == "canceled"
    assert runner.run_chunk(job["id"], 2, ctx) == "skipped"
    progress = store.progress(store.get(job["id"]))
    assert (progress["done"], progress["remaining"]) == (4, 6)
    assert [row.get("error") for row in runner.results(job["id"], ctx)] == \
        [None] * 4 + ["No output: not computed (the job was canceled), or expired."] * 2 + \
        ["Not computed: the job was canceled."] * 4


def test_an_unknown_job_id_never_becomes_a_job(ctx):
    store = runner.job_store(ctx)
    assert runner.cancel_job("0" * 32, ctx) is None
    assert not store.redis.exists(store.key("0" * 32))


def test_one_job_that_cannot_resume_does_not_stop_the_watchdog(ctx, inputs_dir, monkeypatch):
    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}])
    first = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    second = runner.create_job(ctx, model="echo", source={"type": "jsonl", "path": "in.jsonl"})
    monkeypatch.setattr(ctx, "settings", dataclasses.replace(ctx.settings, batch_stale_s=0))
    resume = runner.resume_job

    def broken_for_one(job_id, *args):
        if job_id == first["id"]:
            raise RuntimeError("unreadable")
        return resume(job_id, *args)

    monkeypatch.setattr(runner, "resume_job", broken_for_one)
    assert runner.resume_stale_jobs(ctx, lambda *_: None) == [second["id"]]


def test_relative_paths_outside_the_api_are_found_in_the_input_folder_then_here(inputs_dir, tmp_path, monkeypatch):
    (inputs_dir / "a.jsonl").write_text("{}\n")
    (tmp_path / "b.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert sources.resolve_path("a.jsonl", inputs_dir, confined=False) == inputs_dir / "a.jsonl"
    assert sources.resolve_path("b.jsonl", inputs_dir, confined=False) == tmp_path / "b.jsonl"


@pytest.mark.parametrize("header", ["x,x", "x,,note"])
def test_a_csv_header_that_does_not_name_each_column_once_fails_the_job_with_a_reason(ctx, inputs_dir, header):
    (inputs_dir / "in.csv").write_text(f"{header}\n1,2\n")
    job = runner.create_job(ctx, model="echo", source={"type": "csv", "path": "in.csv"})
    run_inline(ctx, job["id"])
    failed = runner.job_store(ctx).get(job["id"])
    assert failed["status"] == "failed" and "name each column once" in failed["error"]
