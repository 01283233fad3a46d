"""Waiting for a prediction: one subscriber connection per thread, and terminal
announcements that carry the record, so a waiter reads nothing from Redis."""
import json
import threading

from tasks import records


def watched_end(store, prediction_id, announce, timeout_s=5.0):
    with store.watching(prediction_id) as watch:
        threading.Timer(0.05, announce).start()
        return watch.wait(timeout_s)


def test_a_terminal_announcement_carries_the_record(fake_redis):
    store = records.PredictionStore(fake_redis)
    record = store.create(model="m", version="1", queue="q", validated_input={"x": 1}, cache_key="k", owner="o")
    held = dict(record, status=records.RUNNING, started_at="1.0")

    def finish():
        store.update(record["id"], records.SUCCEEDED, record=held, output='{"y": 2}', finished_at="2.0")
        store.delete(record["id"])  # what the waiter shows comes from the announcement alone

    ended = watched_end(store, record["id"], finish)
    assert ended["status"] == records.SUCCEEDED and json.loads(ended["output"]) == {"y": 2}
    assert ended["started_at"] == "1.0" and ended["id"] == record["id"]
    assert not {"input", "cache_key", "owner"} & set(ended)


def test_an_announcement_without_the_record_is_read_back(fake_redis):
    store = records.PredictionStore(fake_redis)
    record = store.create(model="m", version="1", queue="q", validated_input={"x": 1}, cache_key="k")
    ended = watched_end(store, record["id"], lambda: store.update(record["id"], records.FAILED, error="boom"))
    assert ended["status"] == records.FAILED and ended["error"] == "boom" and ended["input"] == '{"x":1}'


def test_a_thread_keeps_its_subscriber_and_skips_what_earlier_watches_left(fake_redis):
    store = records.PredictionStore(fake_redis)
    first = store.create(model="m", version="1", queue="q", validated_input={"x": 1}, cache_key="k")
    second = store.create(model="m", version="1", queue="q", validated_input={"x": 2}, cache_key="k")
    with store.watching(first["id"]):
        pubsub = store._local.pubsub
    # A late announcement for the first id must not end the wait for the second.
    store.update(first["id"], records.SUCCEEDED, record=first, output="{}")
    ended = watched_end(store, second["id"], lambda: store.update(second["id"], records.SUCCEEDED, record=second,
                                                                    output='{"z": 3}'))
    assert ended["id"] == second["id"] and ended["output"] == '{"z": 3}'
    assert store._local.pubsub is pubsub


def test_a_wait_that_times_out_shows_the_record_as_it_stands(fake_redis):
    store = records.PredictionStore(fake_redis)
    record = store.create(model="m", version="1", queue="q", validated_input={"x": 1}, cache_key="k")
    ended = watched_end(store, record["id"], lambda: store.update(record["id"], records.RUNNING), timeout_s=0.3)
    assert ended["status"] == records.RUNNING


def submitted_waiting(store, n=1):
    """What a waiting submit does: its record names the process's waiter channel."""
    import contextlib

    stack = contextlib.ExitStack()
    prediction_id = records.new_prediction_id()
    wait = stack.enter_context(store.waiting(prediction_id))
    outcome, _, record = store.submit(model="m", version="1", queue="q", validated_input={"x": n}, cache_key=f"k{n}",
                                      owner="o", queue_pending=[], limit=0, prediction_id=prediction_id,
                                      waiter=wait.channel)
    assert outcome == "created" and record["waiter"] == wait.channel
    return stack, wait, record


def test_a_waiting_request_hears_of_its_end_on_its_process_channel(fake_redis):
    store = records.PredictionStore(fake_redis)
    stack, wait, record = submitted_waiting(store)
    with stack:
        held = dict(record, status=records.RUNNING, started_at="1.0")
        store.update(record["id"], records.SUCCEEDED, record=held, output='{"y": 2}', finished_at="2.0")
        store.delete(record["id"])  # what the waiter shows comes from the announcement alone
        ended = wait.wait(5.0)
    assert ended["status"] == records.SUCCEEDED and ended["output"] == '{"y": 2}' and ended["id"] == record["id"]
    assert not {"input", "cache_key", "owner", "waiter"} & set(ended)


def test_one_subscription_serves_every_waiting_request_of_a_process(fake_redis):
    store = records.PredictionStore(fake_redis)
    first, first_wait, first_record = submitted_waiting(store, 1)
    second, second_wait, second_record = submitted_waiting(store, 2)
    with first, second:
        assert first_wait.channel == second_wait.channel
        store.update(second_record["id"], records.FAILED, record=second_record, error="boom")
        assert second_wait.wait(5.0)["error"] == "boom"
        assert first_wait.wait(0.2)["status"] == records.QUEUED  # not its end
    assert fake_redis.pubsub_numsub(first_wait.channel) == [(first_wait.channel, 1)]


def test_a_canceled_waiting_prediction_ends_the_wait(fake_redis):
    store = records.PredictionStore(fake_redis)
    stack, wait, record = submitted_waiting(store)
    with stack:
        assert store.cancel(record, cancelable=False) == records.CANCELED
        assert wait.inbox.get(timeout=5.0) == {"id": record["id"], "status": records.CANCELED}
        wait.inbox.put({"id": record["id"], "status": records.CANCELED})
        ended = wait.wait(5.0)
    assert ended["status"] == records.CANCELED and ended["input"] == '{"x":1}'  # read back: the script sent the id


def test_a_waiting_prediction_of_a_removed_model_ends_the_wait(fake_redis):
    store = records.PredictionStore(fake_redis)
    stack, wait, record = submitted_waiting(store)
    with stack:
        assert store.fail_queued("m", "1", "", "gone") == [record["id"]]
        assert wait.inbox.get(timeout=5.0) == {"id": record["id"], "status": records.FAILED}


def test_waiting_requests_read_their_record_once_the_subscription_is_back(fake_redis):
    from tasks.waiters import _READ_AGAIN

    store = records.PredictionStore(fake_redis)
    stack, wait, record = submitted_waiting(store)
    with stack:
        # Finished while the subscription was down: the announcement was lost.
        fake_redis.hset(store.key(record["id"]), mapping={"status": records.SUCCEEDED, "output": "{}"})
        store._waiters._tell_everyone(_READ_AGAIN)
        assert wait.wait(5.0)["status"] == records.SUCCEEDED


def test_a_cancel_while_queued_is_announced_as_its_status_change(fake_redis):
    # As every status change is (JSON of the changed fields), so a watcher reads the record
    # back at once instead of waiting out its time.
    store = records.PredictionStore(fake_redis)
    record = store.create(model="m", version="1", queue="q", validated_input={"x": 1}, cache_key="k")
    pubsub = fake_redis.pubsub()
    pubsub.subscribe(store.channel(record["id"]))
    pubsub.get_message(timeout=1)
    assert store.cancel(record, cancelable=False) == records.CANCELED
    announced = json.loads(pubsub.get_message(timeout=1)["data"])
    assert announced["status"] == records.CANCELED and announced["finished_at"]
