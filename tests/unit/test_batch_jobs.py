"""Batch jobs on fakeredis: sources, planning, chunks, counts, cancel, resume, the API."""
import json

import pytest

from models.base import encode_output

from batch_jobs import runner, sources
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
    (inputs_dir / "in.csv").write_text("x\n1.5\nabc\n\n2\n")
    job = runner.create_job(ctx, model="echo", source={"type": "csv", "path": "in.csv"})
    run_inline(ctx, job["id"])
    store = runner.job_store(ctx)
    progress = store.progress(store.get(job["id"]))
    assert (progress["done"], progress["invalid"]) == (2, 1)
    assert store.errors(job["id"])[0]["line"] == 3


def test_csv_booleans_are_words(ctx, inputs_dir, fake_redis):
    from batch_jobs.sources import csv_rows
    from models.declaration import parse_repository as parse

    spec = parse({"models": [declaration("b", "Echo", inputs={"flag": {"type": "boolean"}})]})[0]
    (inputs_dir / "b.csv").write_text("flag\ntrue\nFALSE\nyes\n")
    rows = list(csv_rows(inputs_dir / "b.csv", spec))
    assert [row for _, row in rows[:2]] == [{"flag": True}, {"flag": False}]
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
    assert store.progress(store.get(job["id"]))["done"] == 4
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
    ({"model": "digits"}, "source"),
])
def test_bad_batch_requests_are_422(admin_app, body, field):
    response = admin_app.test_client().post("/batch-jobs", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert field in response.json["errors"]["json"]


def test_results_stream_as_json_lines(admin_app, fake_redis, inputs_dir):
    ferry = admin_app.extensions["ferry"]
    write_jsonl(inputs_dir / "m.jsonl", [{"text": "a"}, {"text": "b"}])
    job = runner.create_job(ferry, model="minilm", source={"type": "jsonl", "path": "m.jsonl"})
    runner.plan_job(job["id"], ferry, lambda *_: None)
    ferry.cache.set(ferry.cache.key("minilm", "1.0.0", {"text": "a", "normalize": True}), encode_output({"embedding": [1]}), 60)
    response = admin_app.test_client().get(f"/batch-jobs/{job['id']}/results", headers=ADMIN)
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert lines[0] == {"line": 1, "input": {"text": "a", "normalize": True}, "output": {"embedding": [1]}}
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


def test_chunks_planned_without_digests_still_run(ctx, inputs_dir):
    # Chunks written before digests were stored hold [line, input] only.
    write_jsonl(inputs_dir / "in.jsonl", [{"x": 1}, {"x": 2}])
    job = runner.create_job(ctx, model="picky", source={"type": "jsonl", "path": "in.jsonl"})
    pending = []
    runner.plan_job(job["id"], ctx, lambda _job, number: pending.append(number))
    store = runner.job_store(ctx)
    store.write_chunk(job["id"], 0, [item[:2] for item in store.chunk_items(job["id"], 0)])
    runner.run_chunk(job["id"], 0, ctx)
    assert ctx.cache.get(ctx.cache.key("picky", "1", {"x": 2.0})) == {"double": 4.0}
    assert [row["output"] for row in runner.results(job["id"], ctx)] == [{"double": 2.0}, {"double": 4.0}]


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
