"""The worker's logic, called directly with fake models on fakeredis."""
import json
import time

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
    assert ctx.store.get(record["id"])["error"] == "Model 'gone' version '1' is not served any more."


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
    claim_as(ctx, record["id"], "other-host:1", 60)
    assert run_prediction(record["id"], ctx) == "claimed elsewhere"
    assert ctx.store.get(record["id"])["status"] == "queued"


def claim_as(ctx, prediction_id, worker, ttl_s):
    """What another worker's claim looks like: taken off the pending list, a lease, a deadline."""
    ctx.redis.lrem(ctx.store.pending_key("echo", "1"), 1, prediction_id)
    ctx.redis.set(ctx.store.claim_key(prediction_id), worker, ex=ttl_s)
    ctx.redis.zadd(ctx.store.claims_key, {prediction_id: time.time() + ttl_s})


def lapse(ctx, prediction_id):
    """What the passing of a lease does: the claim key expires, its deadline is past."""
    ctx.redis.delete(ctx.store.claim_key(prediction_id))
    ctx.redis.zadd(ctx.store.claims_key, {prediction_id: 1.0})


def test_sweeper_leaves_a_prediction_claimed_again_since_its_deadline(batching_ctx):
    from tasks.predict import sweep

    ctx = batching_ctx
    record = submit(ctx)
    claim_as(ctx, record["id"], "dead-host:1", 60)
    lapse(ctx, record["id"])
    claim_as(ctx, record["id"], "live-host:2", 60)  # its own message reached a live worker
    assert sweep(ctx, lambda *a, **k: pytest.fail("must not resend")) == []


def test_taking_ids_claims_them_and_marks_them_running_in_the_same_step(batching_ctx, fake_redis):
    from tasks.leases import worker_name

    ctx = batching_ctx
    submitted = [submit(ctx, x=float(x)) for x in range(3)]
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(ctx.store.channel(submitted[0]["id"]), ctx.store.queue_channel("echo", "1"))
    taken = ctx.store.take(worker_name(), 15, "echo", "1", 5, started_at="7.5", own_id=submitted[1]["id"])
    assert taken.outcome == "taken"
    assert taken.record["id"] == submitted[1]["id"] and taken.record["input"] == submitted[1]["input"]
    assert [record["id"] for record in taken.others] == [submitted[0]["id"], submitted[2]["id"]]
    assert ctx.redis.llen(ctx.store.pending_key("echo", "1")) == 0
    assert all(ctx.store.is_claimed(record["id"]) for record in submitted)
    assert ctx.redis.zcard(ctx.store.claims_key) == 3
    for record in submitted:
        stored = ctx.store.get(record["id"])
        assert (stored["status"], stored["started_at"], stored["batch_size"], stored["attempts"]) == (
            "running", "7.5", "3", "1")
    messages = [pubsub.get_message(timeout=0.05) for _ in range(4)]
    announced = [message["data"] for message in messages if message is not None]
    assert json.loads(announced[0]) == {"status": "running", "started_at": "7.5", "batch_size": 3}
    assert announced[1:] == ["taken"]


@pytest.mark.parametrize("change, outcome", [
    ({"status": "canceled"}, "canceled"),
    ({"retry_at": "4102444800.0"}, "waiting"),  # in 2100
    ({"revision": "r2"}, "stale"),
])
def test_an_own_id_that_must_not_run_is_left_unclaimed(batching_ctx, change, outcome):
    ctx = batching_ctx
    record, other = submit(ctx, x=1.0), submit(ctx, x=2.0)
    ctx.redis.hset(ctx.store.key(record["id"]), mapping=change)
    taken = ctx.store.take("w:1", 15, "echo", "1", 5, started_at="1.0", own_id=record["id"], not_before=time.time())
    assert (taken.outcome, taken.others) == (outcome, [])
    assert not ctx.store.is_claimed(record["id"]) and not ctx.store.is_claimed(other["id"])
    assert ctx.redis.llen(ctx.store.pending_key("echo", "1")) == 2


def test_others_queued_for_another_registration_are_not_taken(batching_ctx):
    ctx = batching_ctx
    record, other = submit(ctx, x=1.0), submit(ctx, x=2.0)
    ctx.redis.hset(ctx.store.key(other["id"]), "revision", "r2")
    taken = ctx.store.take("w:1", 15, "echo", "1", 5, started_at="1.0", own_id=record["id"])
    assert (taken.outcome, taken.others) == ("taken", [])
    assert not ctx.store.is_claimed(other["id"]) and ctx.store.get(other["id"])["status"] == "queued"


def test_a_message_that_names_its_model_starts_without_reading_the_record_first(batching_ctx, monkeypatch):
    ctx = batching_ctx
    submitted = [submit(ctx, x=float(x)) for x in range(2)]
    monkeypatch.setattr(ctx.store, "get", lambda prediction_id: pytest.fail("read the record before taking it"))
    assert run_prediction(submitted[0]["id"], ctx, "echo", "1") == records.SUCCEEDED
    monkeypatch.undo()
    assert [ctx.store.get(record["id"])["batch_size"] for record in submitted] == ["2", "2"]


def test_a_canceled_prediction_is_not_run(batching_ctx):
    ctx = batching_ctx
    record = submit(ctx)
    ctx.store.update(record["id"], records.CANCELED)
    assert run_prediction(record["id"], ctx, "echo", "1") == records.CANCELED
    assert not ctx.store.is_claimed(record["id"])
    assert "started_at" not in ctx.store.get(record["id"])


def test_leases_are_renewed_only_where_still_held(batching_ctx):
    from tasks.leases import worker_name

    ctx = batching_ctx
    mine, theirs = submit(ctx, x=1.0), submit(ctx, x=2.0)
    claim_as(ctx, mine["id"], worker_name(), 5)
    claim_as(ctx, theirs["id"], "other-host:9", 5)
    with ctx.leases.holding([mine["id"]]) as held:
        held.append(theirs["id"])
        assert ctx.leases.renew_now() == 1
    assert ctx.redis.ttl(ctx.store.claim_key(mine["id"])) > 5  # renewed to the 15 s lease
    assert ctx.redis.ttl(ctx.store.claim_key(theirs["id"])) <= 5
    deadline = ctx.redis.zscore(ctx.store.claims_key, mine["id"])
    assert deadline > ctx.redis.zscore(ctx.store.claims_key, theirs["id"]) + 5
    assert ctx.leases.held() == []


def test_sweeper_resends_predictions_whose_worker_died(batching_ctx):
    from tasks.predict import sweep

    ctx = batching_ctx
    record = submit(ctx)
    claim_as(ctx, record["id"], "dead-host:1", 60)
    sent = []
    resend = lambda prediction_id, spec: sent.append((prediction_id, spec.name))  # noqa: E731
    assert sweep(ctx, resend) == []  # the claim has not lapsed yet
    lapse(ctx, record["id"])
    assert sweep(ctx, resend) == [record["id"]]
    assert sent == [(record["id"], "echo")]
    assert ctx.redis.lrange(ctx.store.pending_key("echo", "1"), 0, -1) == [record["id"]]  # back in the queue
    assert run_prediction(record["id"], ctx) == records.SUCCEEDED  # the claim was released


def test_sweeper_resends_a_prediction_whose_message_was_lost(batching_ctx):
    from tasks.predict import sweep

    ctx = batching_ctx
    old, recent = submit(ctx, x=1.0), submit(ctx, x=2.0)
    waited = ctx.settings.visibility_timeout_s + 1
    ctx.redis.hset(ctx.store.key(old["id"]), "queued_at", repr(float(old["queued_at"]) - waited))
    sent = []
    resend = lambda prediction_id, spec: sent.append(prediction_id)  # noqa: E731
    assert sweep(ctx, resend) == [old["id"]]
    assert sweep(ctx, resend) == []  # re-sent once per visibility timeout, not at every sweep
    ctx.redis.delete(ctx.store.key(recent["id"]))  # an expired record leaves the pending list
    sweep(ctx, resend)
    assert ctx.redis.lrange(ctx.store.pending_key("echo", "1"), 0, -1) == [old["id"]]
    assert run_prediction(old["id"], ctx) == records.SUCCEEDED


def test_sweeper_fails_a_prediction_that_keeps_killing_workers(batching_ctx):
    from tasks.predict import MAX_ATTEMPTS, sweep

    ctx = batching_ctx
    record = submit(ctx)
    ctx.redis.hset(ctx.store.key(record["id"]), "attempts", MAX_ATTEMPTS)  # three runs began, none ended
    claim_as(ctx, record["id"], "host:3", 60)
    lapse(ctx, record["id"])
    assert sweep(ctx, lambda *a, **k: pytest.fail("must not resend")) == []
    assert "3 times" in ctx.store.get(record["id"])["error"]


def test_each_run_counts_an_attempt(batching_ctx):
    ctx = batching_ctx
    record = submit(ctx)
    run_prediction(record["id"], ctx)
    assert ctx.store.get(record["id"])["attempts"] == "1"


def test_redis_lost_mid_task_requeues_the_message_instead_of_acknowledging_it(ctx, redis_server, monkeypatch):
    from celery.exceptions import Reject

    import tasks.predict as predict_module

    record = submit(ctx)
    monkeypatch.setattr(predict_module, "current", lambda: ctx)
    redis_server.connected = False
    with pytest.raises(Reject) as raised:
        predict_module.predict.run(record["id"])
    assert raised.value.requeue is True


@pytest.fixture
def retry_ctx(fake_redis):
    from tasks.senders import RecordingSender

    specs = parse_repository({"models": [declaration("flaky", "Flaky", retries={"max": 2, "backoff_s": 4})]})
    return WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs),
                               sender=RecordingSender())


def due(ctx, prediction_id):
    """What the passing of a retry's backoff does."""
    ctx.redis.hset(ctx.store.key(prediction_id), "retry_at", repr(1.0))


def test_transient_error_is_retried_with_backoff_then_succeeds(retry_ctx):
    ctx = retry_ctx
    record = submit(ctx, model="flaky", x=2.0)  # fails twice, then works
    assert run_prediction(record["id"], ctx) == records.QUEUED
    stored = ctx.store.get(record["id"])
    assert stored["retries"] == "1" and stored["error"].startswith("TransientError: upstream is busy (retry 1 of 2 in")
    [sent] = ctx.sender.sent
    assert sent["args"] == [record["id"], "flaky", "1"] and 2 <= sent["countdown"] <= 4  # 4 s, with jitter
    assert run_prediction(record["id"], ctx) == "waiting to retry"  # its old message, before the backoff ends
    due(ctx, record["id"])
    assert run_prediction(record["id"], ctx) == records.QUEUED
    assert 4 <= ctx.sender.sent[-1]["countdown"] <= 8  # doubled
    due(ctx, record["id"])
    assert run_prediction(record["id"], ctx) == records.SUCCEEDED
    stored = ctx.store.get(record["id"])
    assert json.loads(stored["output"]) == {"tries": 3.0} and "error" not in stored


def test_transient_errors_past_the_retries_fail_clearly(retry_ctx):
    ctx = retry_ctx
    record = submit(ctx, model="flaky", x=9.0)
    for _ in range(2):
        assert run_prediction(record["id"], ctx) == records.QUEUED
        due(ctx, record["id"])
    assert run_prediction(record["id"], ctx) == records.FAILED
    assert ctx.store.get(record["id"])["error"] == "TransientError: upstream is busy (gave up after 2 retries)"
    assert len(ctx.sender.sent) == 2


def test_a_lost_retry_message_is_resent_by_the_sweeper(retry_ctx):
    from tasks.predict import sweep

    ctx = retry_ctx
    record = submit(ctx, model="flaky", x=1.0)
    run_prediction(record["id"], ctx)
    sent = []
    assert sweep(ctx, lambda prediction_id, spec: sent.append(prediction_id)) == []
    ctx.redis.zadd(ctx.store.claims_key, {record["id"]: 1.0})  # overdue
    assert sweep(ctx, lambda prediction_id, spec: sent.append(prediction_id)) == [record["id"]]


def test_other_errors_fail_at_once_without_retry(ctx):
    from tasks.senders import RecordingSender

    ctx.sender = RecordingSender()
    record = submit(ctx, model="broken")
    assert run_prediction(record["id"], ctx) == records.FAILED
    assert ctx.sender.sent == []


@pytest.mark.parametrize("exc, expected", [
    (ValueError("bad\n  value"), "ValueError: bad value"),
    (RuntimeError('step failed\nTraceback (most recent call last):\n  File "m.py", line 3\nKeyError: 1'),
     "RuntimeError: step failed"),
    (KeyError(), "KeyError"),
    (ValueError("x" * 900), "ValueError: " + "x" * 487 + "…"),
])
def test_error_messages_are_one_clear_line_without_traceback(exc, expected):
    from models.base import error_message

    assert error_message(exc) == expected


@pytest.fixture
def waited_ctx(fake_redis):
    specs = parse_repository({"models": [
        declaration("flaky", "Flaky", retries={"max": 3, "backoff_s": 0.001, "backoff_max_s": 0.001}),
        declaration("halfway", "Halfway", cancelable=True),
    ]})
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))
    ctx.sender.send = lambda *args, **kwargs: None  # a retry's message: run by hand below
    return ctx


def waited_and_read(ctx, fake_redis, record, run) -> tuple[dict, dict]:
    """What a `Prefer: wait` answers (the announcement on its process's channel, or the
    record read back when it names only the status) and what GET answers."""
    from app.resources.predictions import view
    from tasks.waiters import Wait

    fake_redis.hset(ctx.store.key(record["id"]), "waiter", "ferry:waiter:test")
    pubsub = fake_redis.pubsub()
    pubsub.subscribe("ferry:waiter:test")
    pubsub.get_message(timeout=1)
    run()
    import queue

    inbox = queue.SimpleQueue()
    inbox.put(json.loads(pubsub.get_message(timeout=1)["data"]))
    waited = Wait(ctx.store, record["id"], inbox, "ferry:waiter:test").wait(1)
    return view(waited), view(ctx.store.get(record["id"]))


def test_a_waited_success_after_retries_shows_no_retry_note(waited_ctx, fake_redis):
    record = submit(waited_ctx, "flaky", 1.0)

    def run():
        assert run_prediction(record["id"], waited_ctx, "flaky", "1") == records.QUEUED  # transient: retried
        time.sleep(0.01)
        assert run_prediction(record["id"], waited_ctx, "flaky", "1") == records.SUCCEEDED

    waited, got = waited_and_read(waited_ctx, fake_redis, record, run)
    assert waited == got and waited["error"] is None


def test_a_waited_cancel_while_running_shows_what_get_shows(waited_ctx, fake_redis):
    from tests.fake_models import Halfway

    record = submit(waited_ctx, "halfway", 1.0)
    Halfway.cancel = staticmethod(lambda: waited_ctx.store.cancel(waited_ctx.store.get(record["id"]), True))

    def run():
        assert run_prediction(record["id"], waited_ctx, "halfway", "1") == records.CANCELED

    try:
        waited, got = waited_and_read(waited_ctx, fake_redis, record, run)
    finally:
        Halfway.cancel = staticmethod(lambda: None)
    assert waited == got and waited["status"] == records.CANCELED and waited["progress"] == 0.5
