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
