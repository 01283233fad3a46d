"""How work is handed to the workers: one small base class, a real and a fake."""
from __future__ import annotations

import base64
import json
import uuid

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
        self._templates: dict[tuple, MessageTemplate] = {}

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
        # What the message depends on (a spec itself may hold lists: defaults of array inputs).
        shape = (spec.name, spec.version, spec.queue, spec.timeout_s, spec.hard_timeout_s)
        template = self._templates.get(shape)
        if template is None:
            if len(self._templates) >= _MAX_TEMPLATES:  # runtime models come and go
                self._templates.clear()
            template = self._templates[shape] = MessageTemplate.of(self._built(_PLACEHOLDER, spec))
        return template.fill(prediction_id) if template.usable else self._built(prediction_id, spec)

    def _built(self, prediction_id: str, spec: ModelSpec) -> tuple[str, str]:
        with held_messages() as held:
            self.send(prediction_id, spec)
        [message] = held
        return message


# Stands for the prediction id in a model's message template: not hex, so never an id.
_PLACEHOLDER = "ferry-prediction-id-placeholder!"
_MAX_TEMPLATES = 256


class MessageTemplate:
    """A model's prediction message as Celery builds it, for a placeholder id: each message
    is that text with the prediction id, a new task id and a new delivery tag put in. Celery
    and kombu spend some 100 µs of the API's CPU building each message (a third of the
    submit's own work); this does the same in a few. Built by Celery once per model version
    and API process, so it follows whatever Celery puts in a message."""

    def __init__(self, queue: str, parts: list[str], body: str):
        self.queue, self.parts, self.body = queue, parts, body

    @property
    def usable(self) -> bool:
        return bool(self.parts)

    @classmethod
    def of(cls, built: tuple[str, str]) -> "MessageTemplate":
        queue, payload = built
        message = json.loads(payload)
        task_id, tag = message["headers"]["id"], message["properties"]["delivery_tag"]
        body = base64.b64decode(message["body"]).decode()
        # Each must be where it is expected, and only there: otherwise, no template (Celery builds each message).
        counts = {message["body"]: 1, task_id: 3, tag: 1}
        if (message["properties"].get("body_encoding") != "base64" or body.count(_PLACEHOLDER) != 1
                or any(payload.count(token) != n for token, n in counts.items())):
            return cls(queue, [], "")
        text = payload.replace(message["body"], "\x00body\x00").replace(task_id, "\x00task\x00")
        return cls(queue, text.replace(tag, "\x00tag\x00").split("\x00"), body)

    def fill(self, prediction_id: str) -> tuple[str, str]:
        body = base64.b64encode(self.body.replace(_PLACEHOLDER, prediction_id).encode()).decode()
        values = {"body": body, "task": str(uuid.uuid4()), "tag": str(uuid.uuid4())}
        # Odd parts are the names of what goes there; the prediction id is also in `argsrepr`.
        return self.queue, "".join(values[part] if i % 2 else part.replace(_PLACEHOLDER, prediction_id)
                                   for i, part in enumerate(self.parts))


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
