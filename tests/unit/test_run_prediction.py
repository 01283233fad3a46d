"""The worker's logic, called directly with fake models on fakeredis."""
import json

import pytest

from models.declaration import parse_repository
from models.registry import Registry
from tasks import records
from tasks.context import WorkerContext
from tasks.predict import run_prediction
from tasks.settings import Settings
from tests.fake_models import declaration


@pytest.fixture
def ctx(fake_redis):
    specs = parse_repository({"models": [
        declaration("echo", "Echo", cache_ttl_s=100),
        declaration("broken", "Broken"),
        declaration("wrong", "WrongLength"),
    ]})
    return WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))


def submit(ctx, model="echo", x=1.0):
    return ctx.store.create(model=model, version="1", queue="realtime-cpu", validated_input={"x": x},
                            cache_key=ctx.cache.key(model, "1", {"x": x}))


def test_success_records_output_timings_and_fills_the_cache(ctx, fake_redis):
    record = submit(ctx)
    assert run_prediction(record["id"], ctx) == records.SUCCEEDED
    stored = ctx.store.get(record["id"])
    assert stored["status"] == "succeeded"
    assert json.loads(stored["output"]) == {"echo": 1.0, "device": "cpu"}
    assert float(stored["queued_at"]) <= float(stored["started_at"]) <= float(stored["finished_at"])
    assert ctx.cache.get(record["cache_key"]) == {"echo": 1.0, "device": "cpu"}
    assert 0 < fake_redis.ttl(record["cache_key"]) <= 100


def test_model_is_loaded_once_per_process(ctx):
    for x in (1.0, 2.0, 3.0):
        run_prediction(submit(ctx, x=x)["id"], ctx)
    assert ctx.pool.loaded() == [("echo", "1")]


def test_model_failure_is_a_clear_error_without_traceback(ctx):
    record = submit(ctx, model="broken")
    assert run_prediction(record["id"], ctx) == records.FAILED
    stored = ctx.store.get(record["id"])
    assert stored["error"] == "RuntimeError: weights are corrupt"
    assert ctx.cache.get(record["cache_key"]) is None


def test_wrong_output_length_gets_a_hint(ctx):
    record = submit(ctx, model="wrong")
    run_prediction(record["id"], ctx)
    assert "Hint: predict must return a list with one output per input" in ctx.store.get(record["id"])["error"]


def test_redelivery_of_a_finished_prediction_changes_nothing(ctx):
    record = submit(ctx)
    run_prediction(record["id"], ctx)
    before = ctx.store.get(record["id"])
    assert run_prediction(record["id"], ctx) == records.SUCCEEDED
    assert ctx.store.get(record["id"]) == before


def test_expired_record_is_skipped(ctx):
    assert run_prediction("f" * 32, ctx) == "missing"


def test_model_removed_from_repository_fails_clearly(ctx, fake_redis):
    record = ctx.store.create(model="gone", version="1", queue="q", validated_input={"x": 1}, cache_key="k")
    run_prediction(record["id"], ctx)
    assert ctx.store.get(record["id"])["error"] == "Model 'gone' is not served any more."


def test_status_changes_are_published(ctx, fake_redis):
    record = submit(ctx)
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ctx.store.channel(record["id"]))
    run_prediction(record["id"], ctx)
    # get_message answers None for the swallowed subscribe confirmation too.
    messages = (pubsub.get_message(timeout=0.05) for _ in range(5))
    seen = [json.loads(message["data"]) for message in messages if message is not None]
    assert [message["status"] for message in seen] == ["running", "succeeded"]
    # The terminal one carries the record, so that a waiter need not read it; never its input.
    assert seen[1]["id"] == record["id"] and json.loads(seen[1]["output"]) == {"echo": 1.0, "device": "cpu"}
    assert "input" not in seen[1] and "owner" not in seen[1]


@pytest.mark.parametrize("x, complaint", [(1.0, "Out of range float values"), (-1.0, "not JSON serializable")])
def test_outputs_that_are_not_plain_json_fail_with_a_hint(fake_redis, x, complaint):
    specs = parse_repository({"models": [declaration("notjson", "NotJson")]})
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))
    record = submit(ctx, model="notjson", x=x)
    assert run_prediction(record["id"], ctx) == records.FAILED
    error = ctx.store.get(record["id"])["error"]
    assert complaint in error and "Hint: predict must return dicts of" in error
    assert ctx.cache.get(record["cache_key"]) is None


def test_hard_time_limit_marks_the_prediction_failed(ctx, monkeypatch):
    from celery.exceptions import TimeLimitExceeded

    import tasks.predict as predict_module

    record = submit(ctx)
    ctx.store.update(record["id"], records.RUNNING, started_at="1.0")
    monkeypatch.setattr(predict_module, "current", lambda: ctx)
    predict_module._hard_time_limit(task_id="t", exception=TimeLimitExceeded(31.0), args=[record["id"]])
    stored = ctx.store.get(record["id"])
    assert stored["status"] == "failed" and stored["error"] == "Timed out: stopped after 31 s."


def test_worker_start_names_models_whose_module_is_missing():
    from tasks.startup import missing_entrypoints

    specs = parse_repository({"models": [declaration("echo", "Echo"),
                                         {**declaration("ghost", "Echo"), "entrypoint": "nowhere.at_all:Ghost"}]})
    assert missing_entrypoints(Registry(specs)) == ["ghost (nowhere.at_all:Ghost)"]


@pytest.fixture
def batching_ctx(fake_redis):
    specs = parse_repository({"models": [
        declaration("echo", "Echo", batching={"max_batch_size": 4, "max_wait_ms": 0}),
        declaration("picky", "Picky", batching={"max_batch_size": 8, "max_wait_ms": 0}),
    ]})
    return WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))


def test_queued_predictions_for_one_model_run_as_one_batch(batching_ctx):
    ctx = batching_ctx
    submitted = [submit(ctx, x=float(x)) for x in range(6)]
    assert run_prediction(submitted[0]["id"], ctx) == records.SUCCEEDED
    stored = [ctx.store.get(record["id"]) for record in submitted]
    assert [s["status"] for s in stored] == ["succeeded"] * 4 + ["queued"] * 2
    assert {s["batch_size"] for s in stored[:4]} == {"4"}
    assert [json.loads(s["output"])["echo"] for s in stored[:4]] == [0.0, 1.0, 2.0, 3.0]
    # Their own messages arrive later and find them done; the rest form the next batch.
    assert run_prediction(submitted[2]["id"], ctx) == records.SUCCEEDED
    assert run_prediction(submitted[4]["id"], ctx) == records.SUCCEEDED
    assert ctx.store.get(submitted[5]["id"])["batch_size"] == "2"
    assert ctx.redis.llen(ctx.store.pending_key("echo", "1")) == 0
    assert ctx.redis.zcard(ctx.store.claims_key) == 0


def test_one_bad_input_fails_alone_in_a_batch(batching_ctx):
    ctx = batching_ctx
    submitted = [submit(ctx, model="picky", x=x) for x in (1.0, -1.0, 2.0)]
    run_prediction(submitted[0]["id"], ctx)
    stored = [ctx.store.get(record["id"]) for record in submitted]
    assert [s["status"] for s in stored] == ["succeeded", "failed", "succeeded"]
    assert stored[1]["error"] == "ValueError: x must not be negative"
    assert json.loads(stored[2]["output"]) == {"double": 4.0}


def test_a_prediction_claimed_by_a_live_worker_is_left_to_it(batching_ctx):
    ctx = batching_ctx
    record = submit(ctx)
    assert [r["id"] for r in ctx.store.claim_records([record["id"]], "other-host:1", 60)] == [record["id"]]
    assert run_prediction(record["id"], ctx) == "claimed elsewhere"
    assert ctx.store.get(record["id"])["status"] == "queued"


def test_sweeper_resends_predictions_whose_worker_died(batching_ctx):
    from tasks.predict import sweep

    ctx = batching_ctx
    record = submit(ctx)
    ctx.store.claim_records([record["id"]], "dead-host:1", 60)
    sent = []
    resend = lambda prediction_id, **kwargs: sent.append((prediction_id, kwargs))  # noqa: E731
    assert sweep(ctx, resend) == []  # the claim has not lapsed yet
    ctx.redis.zadd(ctx.store.claims_key, {record["id"]: 1.0})
    assert sweep(ctx, resend) == [record["id"]]
    assert sent == [(record["id"], {"queue": "realtime-cpu", "timeout_s": 60.0, "describe": "echo 1"})]
    assert run_prediction(record["id"], ctx) == records.SUCCEEDED  # the claim was released


def test_sweeper_fails_a_prediction_that_keeps_killing_workers(batching_ctx):
    from tasks.predict import MAX_ATTEMPTS, sweep

    ctx = batching_ctx
    record = submit(ctx)
    ctx.redis.hset(ctx.store.key(record["id"]), "attempts", MAX_ATTEMPTS)  # three runs began, none ended
    ctx.store.claim_records([record["id"]], "host:3", 60)
    ctx.redis.zadd(ctx.store.claims_key, {record["id"]: 1.0})
    assert sweep(ctx, lambda *a, **k: pytest.fail("must not resend")) == []
    assert "3 times" in ctx.store.get(record["id"])["error"]


def test_each_run_counts_an_attempt(batching_ctx):
    ctx = batching_ctx
    record = submit(ctx)
    run_prediction(record["id"], ctx)
    assert ctx.store.get(record["id"])["attempts"] == "1"
