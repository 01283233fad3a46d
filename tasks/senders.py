"""How work is handed to the workers: one small base class, a real and a fake."""
from __future__ import annotations

from models.declaration import ModelSpec
from tasks.celery_app import BATCH_CHUNK_TASK, BATCH_PLAN_TASK, BATCH_QUEUE, PREDICT_TASK, held_messages


class TaskSender:
    def dispatch(self, task: str, args: list, *, queue: str, time_limits: tuple[float, float] | None = None,
                 countdown: float | None = None, describe: str | None = None) -> None:
        """Queue `task(*args)`; `describe` is how monitors (Flower, worker logs) show the args."""
        raise NotImplementedError

    def send(self, prediction_id: str, spec: ModelSpec, *, countdown: float | None = None) -> None:
        """Queue a prediction on its model's queue, under the model's soft and hard time limits."""
        # The model and version ride along, so the worker need not read the record to start.
        self.dispatch(PREDICT_TASK, [prediction_id, spec.name, spec.version], queue=spec.queue,
                      time_limits=(spec.timeout_s, spec.hard_timeout_s), countdown=countdown,
                      describe=f"{spec.name} {spec.version}, prediction {prediction_id}")

    def message(self, prediction_id: str, spec: ModelSpec) -> tuple[str, str]:
        """What `send` would push, as (Redis list, payload), for a caller that pushes it in
        one step with the prediction's record; it calls `pushed` once it has."""
        raise NotImplementedError

    def pushed(self, prediction_id: str, spec: ModelSpec) -> None:
        """The message of `message` is on its queue."""

    def send_plan(self, job_id: str) -> None:
        self.dispatch(BATCH_PLAN_TASK, [job_id], queue=BATCH_QUEUE)

    def send_chunk(self, job_id: str, number: int) -> None:
        self.dispatch(BATCH_CHUNK_TASK, [job_id, number], queue=BATCH_QUEUE)


class CelerySender(TaskSender):
    def __init__(self, celery):
        self.celery = celery

    def dispatch(self, task: str, args: list, *, queue: str, time_limits: tuple[float, float] | None = None,
                 countdown: float | None = None, describe: str | None = None) -> None:
        options = {} if time_limits is None else {"soft_time_limit": time_limits[0], "time_limit": time_limits[1]}
        if countdown:
            options["countdown"] = countdown
        if describe:
            options["argsrepr"] = f"({describe})"
        # retry=False: when the broker is down the API answers 503 at once instead of
        # holding the request in kombu's reconnect loop.
        self.celery.send_task(task, args=args, queue=queue, retry=False, **options)

    def message(self, prediction_id: str, spec: ModelSpec) -> tuple[str, str]:
        with held_messages() as held:
            self.send(prediction_id, spec)
        [message] = held
        return message


class RecordingSender(TaskSender):
    """Keeps what would have been sent; for tests and for running the API without workers."""

    def __init__(self, on_send=None):
        self.sent: list[dict] = []
        self.on_send = on_send

    def dispatch(self, task: str, args: list, *, queue: str, time_limits: tuple[float, float] | None = None,
                 countdown: float | None = None, describe: str | None = None) -> None:
        self.sent.append({"task": task, "args": args, "queue": queue, "time_limits": time_limits,
                          "countdown": countdown})
        if self.on_send is not None:
            self.on_send(*args)

    def message(self, prediction_id: str, spec: ModelSpec) -> tuple[str, str]:
        return "", ""  # nothing to push: `pushed` records it

    def pushed(self, prediction_id: str, spec: ModelSpec) -> None:
        self.send(prediction_id, spec)
