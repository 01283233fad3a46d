"""How the API hands a prediction to the workers: one small base class, a real and a fake."""
from __future__ import annotations

from tasks.celery_app import PREDICT_TASK


class TaskSender:
    def send(self, prediction_id: str, *, queue: str, timeout_s: float) -> None:
        raise NotImplementedError


class CelerySender(TaskSender):
    def __init__(self, celery):
        self.celery = celery

    def send(self, prediction_id: str, *, queue: str, timeout_s: float) -> None:
        # retry=False: when the broker is down the API answers 503 at once instead of
        # holding the request in kombu's reconnect loop.
        self.celery.send_task(
            PREDICT_TASK, args=[prediction_id], queue=queue, retry=False,
            soft_time_limit=timeout_s, time_limit=timeout_s + 30,
        )


class RecordingSender(TaskSender):
    """Keeps what would have been sent; for tests and for running the API without workers."""

    def __init__(self, on_send=None):
        self.sent: list[dict] = []
        self.on_send = on_send

    def send(self, prediction_id: str, *, queue: str, timeout_s: float) -> None:
        self.sent.append({"id": prediction_id, "queue": queue, "timeout_s": timeout_s})
        if self.on_send is not None:
            self.on_send(prediction_id)
