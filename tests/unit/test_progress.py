"""Models report progress through a callback; the worker writes it into the records."""
from __future__ import annotations

import json

import pytest

from models.base import Model, predict_isolated
from models.builtin.pi import PiModel
from tasks import records
from tasks.progress import MAX_PARTIAL_BYTES, ProgressReporter
from tasks.records import PredictionStore


class Counting(Model):
    """Reports half-way and done for each item; fails any batch holding a negative x."""

    def predict(self, batch):
        if len(batch) > 1 and any(item["x"] < 0 for item in batch):
            raise ValueError("negative x")
        for index, item in enumerate(batch):
            self.report_progress(index, 0.5, {"half": item["x"]})
        return [{"x": item["x"]} for item in batch]


def test_reports_reach_the_callback_with_indices_into_the_whole_batch(caplog):
    seen = []
    model = Counting()
    # The batch fails as a whole and is retried item by item: indices still point into it.
    outcomes = predict_isolated(model, [{"x": 1}, {"x": -2}, {"x": 3}],
                                progress=lambda i, f, p: seen.append((i, f, p)))
    assert [error for _, error in outcomes] == [None, None, None]
    assert seen == [(0, 0.5, {"half": 1}), (1, 0.5, {"half": -2}), (2, 0.5, {"half": 3})]
    model.report_progress(0, 1.0)  # outside a batch the report goes nowhere, and is no error
    # The fallback is said: a model that cannot batch does not lose batching without a word.
    assert "its batch of 3 failed (ValueError: negative x); running its inputs one by one" in caplog.text


def test_without_a_callback_reports_are_ignored():
    assert predict_isolated(Counting(), [{"x": 1}]) == [('{"x":1}', None)]


@pytest.fixture
def store(fake_redis):
    return PredictionStore(fake_redis)


def record(store) -> str:
    return store.create(model="m", version="1", queue="q", validated_input={}, cache_key="k")["id"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_reporter_writes_progress_and_partial_and_announces_it(store, fake_redis):
    prediction_id = record(store)
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.channel(prediction_id))
    pubsub.get_message(timeout=0.1)
    ProgressReporter(store, [prediction_id])(0, 0.4, {"estimate": 3.0})
    stored = store.get(prediction_id)
    assert (stored["status"], float(stored["progress"]), json.loads(stored["partial"])) == (
        records.QUEUED, 0.4, {"estimate": 3.0})
    assert pubsub.get_message(timeout=1)["data"] == records.PROGRESS


def test_reporter_keeps_at_most_ten_updates_a_second_but_always_the_last(store):
    prediction_id, clock = record(store), Clock()
    report = ProgressReporter(store, [prediction_id], clock=clock)
    report(0, 0.1)
    clock.now = 0.05
    report(0, 0.2)
    assert float(store.get(prediction_id)["progress"]) == 0.1
    report(0, 1.0)
    assert float(store.get(prediction_id)["progress"]) == 1.0
    clock.now = 0.2
    report(0, 7.0)  # clamped to 0..1
    assert float(store.get(prediction_id)["progress"]) == 1.0


def test_reporter_refuses_what_it_cannot_show(store):
    prediction_id = record(store)
    report = ProgressReporter(store, [prediction_id])
    with pytest.raises(IndexError, match="Hint"):
        report(1, 0.5)
    with pytest.raises(ValueError):
        report(0, float("nan"))
    with pytest.raises(TypeError, match="report_progress: the partial output is not plain JSON"):
        report(0, 0.5, {"bad": object()})
    report(0, 0.5, {"big": "x" * MAX_PARTIAL_BYTES})
    stored = store.get(prediction_id)
    assert float(stored["progress"]) == 0.5 and "partial" not in stored


def test_pi_reports_every_round_and_converges():
    seen = []
    outcomes = predict_isolated(PiModel(), [{"rounds": 4, "points_per_round": 20000, "pause_s": 0, "seed": 1}],
                                progress=lambda i, f, p: seen.append((i, f, p)))
    output = json.loads(outcomes[0][0])
    assert [fraction for _, fraction, _ in seen] == [0.25, 0.5, 0.75, 1.0]
    assert seen[-1][2]["estimate"] == output["estimate"] and output["points"] == 80000
    assert abs(output["estimate"] - 3.14159) < 0.05
