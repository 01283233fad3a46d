"""Backpressure, in-flight sharing, Idempotency-Key and cancel, through the API on fakeredis."""
import threading

import pytest

from app import create_app
from models.base import encode_output
from tasks import records
from tests.auth import keyed_client

PIXELS = [0.0] * 64


def pixels(n: int) -> list[float]:
    return [float(n % 17), float(n // 17 % 17)] + PIXELS[2:]


def post(client, n: int = 0, headers=None, model="digits"):
    return client.post(f"/models/{model}/predictions", json={"input": {"pixels": pixels(n)}}, headers=headers or {})


@pytest.fixture
def limited(fake_redis, sender):
    app = create_app({"TESTING": True, "redis_url": "redis://unused:1/0", "queue_limit": 2},
                     redis_client=fake_redis, sender=sender)
    return keyed_client(app), app.extensions["ferry"].store


def test_a_full_queue_answers_503_with_retry_after(limited, sender):
    client, store = limited
    assert [post(client, n).status_code for n in range(2)] == [202, 202]
    full = post(client, 2)
    assert full.status_code == 503 and full.headers["Retry-After"] == "5"
    assert "'realtime-cpu' queue is full (2 predictions waiting)" in full.json["message"]
    assert len(sender.sent) == 2
    store.take("w:1", 15, "digits", "1.0.0", 1)  # a worker took one
    assert post(client, 2).status_code == 202


def test_queue_limits_are_set_per_queue():
    from tasks.settings import Settings

    settings = Settings(queue_limit=1000, queue_limits="realtime-gpu=200, batchy=0")
    assert [settings.queue_limit_for(q) for q in ("realtime-gpu", "batchy", "realtime-cpu")] == [200, 0, 1000]


def test_identical_requests_in_flight_share_one_prediction(app, client, sender):
    first, second = post(client, 1), post(client, 1)
    assert first.status_code == second.status_code == 202
    assert first.json["id"] == second.json["id"] and second.headers["Location"] == first.headers["Location"]
    assert len(sender.sent) == 1
    other = keyed_client(app, name="someone else")  # predictions are private to their key
    assert post(other, 1).json["id"] != first.json["id"]
    store = app.extensions["ferry"].store
    store.update(first.json["id"], records.FAILED, error="RuntimeError: boom")
    again = post(client, 1)  # no longer in flight: a new prediction
    assert again.status_code == 202 and again.json["id"] != first.json["id"]


def test_same_idempotency_key_and_body_return_the_same_prediction(client, sender):
    first = post(client, 3, {"Idempotency-Key": "order-17"})
    replay = post(client, 3, {"Idempotency-Key": "order-17"})
    assert first.status_code == replay.status_code == 202
    assert replay.json["id"] == first.json["id"] and replay.headers["Idempotent-Replayed"] == "true"
    assert len(sender.sent) == 1
    other = post(client, 4, {"Idempotency-Key": "order-17"})
    assert other.status_code == 422
    assert "order-17" in other.json["message"] and other.json["errors"]["headers"]["Idempotency-Key"]
    assert len(sender.sent) == 1


def test_an_idempotent_replay_after_the_result_answers_200(app, client):
    first = post(client, 5, {"Idempotency-Key": "k-5"})
    store = app.extensions["ferry"].store
    store.update(first.json["id"], records.SUCCEEDED, output='{"label": 5}', finished_at="2.0")
    replay = post(client, 5, {"Idempotency-Key": "k-5"})
    assert replay.status_code == 200 and replay.json["id"] == first.json["id"]
    assert replay.json["output"] == {"label": 5}


def test_an_idempotency_key_first_answered_from_the_cache_still_guards_its_body(app, client):
    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("digits").load({"pixels": pixels(6)})
    ferry.cache.set(ferry.cache.key("digits", "1.0.0", validated), encode_output({"label": 6}), ttl_s=60)
    assert post(client, 6, {"Idempotency-Key": "c-6"}).status_code == 200
    assert post(client, 6, {"Idempotency-Key": "c-6"}).status_code == 200
    assert post(client, 7, {"Idempotency-Key": "c-6"}).status_code == 422


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "naïve"])
def test_malformed_idempotency_keys_are_422(client, key):
    response = post(client, 8, {"Idempotency-Key": key})
    assert response.status_code == 422 and "Idempotency-Key" in response.json["errors"]["headers"]


def test_idempotency_keys_belong_to_their_api_key(app, client):
    mine = post(client, 9, {"Idempotency-Key": "shared-name"})
    theirs = post(keyed_client(app, name="other"), 10, {"Idempotency-Key": "shared-name"})
    assert mine.status_code == theirs.status_code == 202 and mine.json["id"] != theirs.json["id"]


def test_cancel_a_queued_prediction(app, client, fake_redis):
    from tasks.predict import run_prediction

    submitted = post(client, 11).json
    response = client.delete(f"/predictions/{submitted['id']}")
    assert response.status_code == 204 and response.data == b""
    body = client.get(f"/predictions/{submitted['id']}").json
    assert body["status"] == "canceled" and body["timings"]["finished_at"]
    assert fake_redis.llen("ferry:pending:digits:1.0.0") == 0
    assert client.delete(f"/predictions/{submitted['id']}").status_code == 204  # idempotent
    # Its message arrives later and finds nothing to do.
    from tasks.context import WorkerContext

    ctx = WorkerContext.build(app.extensions["ferry"].settings, fake_redis, app.extensions["ferry"].registry)
    assert run_prediction(submitted["id"], ctx) == records.CANCELED


def test_cancel_of_a_finished_or_running_prediction_says_why_it_cannot(app, client):
    store = app.extensions["ferry"].store
    done, running = post(client, 12).json["id"], post(client, 13).json["id"]
    store.update(done, records.SUCCEEDED, output='{"label": 1}')
    finished = client.delete(f"/predictions/{done}")
    assert finished.status_code == 409 and "already finished (succeeded)" in finished.json["message"]
    store.take("w:1", 15, "digits", "1.0.0", 0, own_id=running)
    store.update(running, records.RUNNING)
    busy = client.delete(f"/predictions/{running}")
    assert busy.status_code == 409 and "cannot stop mid-run" in busy.json["message"]
    assert "cancelable: true" in busy.json["message"]


def test_only_the_owner_may_cancel(app, client):
    submitted = post(client, 14).json
    assert keyed_client(app, name="other").delete(f"/predictions/{submitted['id']}").status_code == 404
    assert client.get(f"/predictions/{submitted['id']}").json["status"] == "queued"


@pytest.fixture
def cancel_ctx(fake_redis):
    from models.declaration import parse_repository
    from models.registry import Registry
    from tasks.context import WorkerContext
    from tasks.settings import Settings
    from tests.fake_models import declaration

    specs = parse_repository({"models": [
        declaration("patient", "Patient", cancelable=True),
        declaration("stubborn", "Patient"),
    ]})
    return WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))


def run_in_thread(ctx, prediction_id):
    from tasks.predict import run_prediction

    result = {}
    thread = threading.Thread(target=lambda: result.update(status=run_prediction(prediction_id, ctx)))
    thread.start()
    return thread, result


def wait_running(ctx, prediction_id):
    from tests.processes import wait_for

    wait_for(lambda: ctx.store.get(prediction_id)["status"] == records.RUNNING, 10, "running")


def test_a_cancelable_model_stops_when_its_running_prediction_is_canceled(cancel_ctx):
    ctx = cancel_ctx
    record = ctx.store.create(model="patient", version="1", queue="realtime-cpu", validated_input={"x": 30.0},
                              cache_key="ferry:cache:patient:1:a")
    thread, result = run_in_thread(ctx, record["id"])
    wait_running(ctx, record["id"])
    assert ctx.store.cancel(ctx.store.get(record["id"]), cancelable=True) == "requested"
    thread.join(20)
    assert not thread.is_alive() and result["status"] == records.CANCELED
    stored = ctx.store.get(record["id"])
    assert stored["status"] == "canceled" and "output" not in stored
    assert ctx.cache.get(record["cache_key"]) is None


def test_a_model_that_is_not_cancelable_is_never_asked(cancel_ctx):
    ctx = cancel_ctx
    record = ctx.store.create(model="stubborn", version="1", queue="realtime-cpu", validated_input={"x": 0.3},
                              cache_key="ferry:cache:stubborn:1:a")
    ctx.redis.hset(ctx.store.key(record["id"]), "cancel_requested", "1.0")  # as if it slipped through
    thread, result = run_in_thread(ctx, record["id"])
    thread.join(20)
    assert result["status"] == records.SUCCEEDED


def test_cancel_checks_ask_redis_sparingly(cancel_ctx):
    from tasks.cancellation import CancelCheck

    ctx = cancel_ctx
    ids = [ctx.store.create(model="patient", version="1", queue="q", validated_input={"x": 1.0},
                            cache_key=f"k{n}")["id"] for n in range(2)]
    now = [100.0]
    check = CancelCheck(ctx.store, ids, min_interval_s=1.0, clock=lambda: now[0])
    assert check() is False
    for prediction_id in ids:
        ctx.redis.hset(ctx.store.key(prediction_id), "cancel_requested", "1.0")
    assert check() is False  # asked less than a second ago
    now[0] += 1.0
    assert check() is True


def test_the_message_is_pushed_with_the_record_and_only_when_one_is_created(fake_redis):
    store = records.PredictionStore(fake_redis)

    def submit(n: int, limit: int = 0):
        return store.submit(model="digits", version="1.0.0", queue="realtime-cpu", validated_input={"n": n},
                            cache_key=f"ferry:cache:digits:1.0.0:{n}", owner="k1", limit=limit,
                            queue_pending=[store.pending_key("digits", "1.0.0")], message=("celery-list", f"m{n}"))

    assert submit(1)[0] == "created"
    assert submit(1)[0] == "joined"  # shares the first: no second message
    assert submit(2, limit=1)[0] == "full"
    assert fake_redis.lrange("celery-list", 0, -1) == ["m1"]


def test_a_message_that_cannot_be_built_gives_its_wait_slot_back(fake_redis):
    from kombu.exceptions import OperationalError

    from tasks.senders import RecordingSender

    class BrokerDown(RecordingSender):
        down = True

        def message(self, prediction_id, spec):
            if self.down:
                raise OperationalError("broker down")
            return super().message(prediction_id, spec)

    sender = BrokerDown()
    app = create_app({"TESTING": True, "redis_url": "redis://unused:1/0"}, redis_client=fake_redis, sender=sender)
    client = keyed_client(app)
    slots = app.extensions["ferry"].settings.max_waiters
    for n in range(slots + 1):
        assert post(client, n, {"Prefer": "wait=1"}).status_code == 503
    sender.down = False
    answer = post(client, 99, {"Prefer": "wait=0.2"})
    assert answer.status_code == 202 and answer.headers["Preference-Applied"] == "wait=0.2"


def test_a_prediction_taken_into_another_batch_has_its_message_withdrawn(fake_redis):
    store = records.PredictionStore(fake_redis)
    ids = []
    for n in range(4):
        outcome, prediction_id, _ = store.submit(
            model="digits", version="1.0.0", queue="realtime-cpu", validated_input={"n": n},
            cache_key=f"ferry:cache:digits:1.0.0:{n}", owner="k1", limit=0,
            queue_pending=[store.pending_key("digits", "1.0.0")], message=("celery-list", f"m{n}"))
        ids.append(prediction_id)
    fake_redis.rpop("celery-list")  # a worker fetched the first prediction's message
    taken = store.take("w:1", 15, "digits", "1.0.0", 2, own_id=ids[0])
    assert [record["id"] for record in taken.others] == ids[1:3]
    # The two taken with it need no message of their own; the one still queued keeps its.
    assert fake_redis.lrange("celery-list", 0, -1) == ["m3"]
    for record in [taken.record, *taken.others]:
        assert "message" not in record and "message_list" not in record
        assert not fake_redis.hexists(store.key(record["id"]), "message")
    assert fake_redis.hget(store.key(ids[3]), "message") == "m3"


def test_a_message_deep_in_a_long_queue_is_left_for_its_worker(fake_redis):
    """The take script looks for batch-mates' messages among the oldest few hundred only, so
    that Redis never scans a long queue whole; one not found runs and finds its prediction taken."""
    store = records.PredictionStore(fake_redis)
    fake_redis.rpush("celery-list", *(f"other{n}" for n in range(300)))  # older messages, of other models
    outcome, prediction_id, _ = store.submit(
        model="digits", version="1.0.0", queue="realtime-cpu", validated_input={"n": 1},
        cache_key="ferry:cache:digits:1.0.0:1", owner="k1", limit=0,
        queue_pending=[store.pending_key("digits", "1.0.0")], message=("celery-list", "mine"))
    taken = store.take("w:1", 15, "digits", "1.0.0", 1)
    assert [record["id"] for record in taken.others] == [prediction_id]
    assert fake_redis.llen("celery-list") == 301 and fake_redis.lindex("celery-list", 0) == "mine"
    assert not fake_redis.hexists(store.key(prediction_id), "message")


def test_a_key_an_older_ferry_remembered_without_the_version_still_guards_its_body(app, client):
    ferry = app.extensions["ferry"]
    validated = ferry.registry.input_schema("digits").load({"pixels": pixels(11)})
    digest = ferry.cache.key("digits", "1.0.0", validated).rsplit(":", 1)[-1]
    # Answered from the cache by an older Ferry, whose entry has expired since.
    ferry.store.remember_idempotent(client.api_key.id, "old-11", f"digits:{digest}")
    first = post(client, 11, {"Idempotency-Key": "old-11"})
    assert first.status_code == 202
    replay = post(client, 11, {"Idempotency-Key": "old-11"})
    assert replay.status_code == 202 and replay.json["id"] == first.json["id"]
    assert post(client, 12, {"Idempotency-Key": "old-11"}).status_code == 422
