"""The API's collaborators, built once per app and reached through `services()`."""
from __future__ import annotations

import dataclasses
import threading

from flask import current_app

from app.keys import KeyStore
from batch_jobs.sources import PopularityCounter
from models.cache import PredictionCache
from models.registry import Registry
from models.runtime import RuntimeModels
from tasks.records import PredictionStore
from tasks.request_log import RequestLog
from tasks.senders import TaskSender
from tasks.settings import Settings


@dataclasses.dataclass
class Services:
    settings: Settings
    redis: object
    registry: Registry
    store: PredictionStore
    cache: PredictionCache
    sender: TaskSender
    popularity: PopularityCounter
    keys: KeyStore
    runtime: RuntimeModels
    request_log: RequestLog
    # Bounds the API threads that `Prefer: wait` may hold, so probes and submits still get one.
    waiters: threading.BoundedSemaphore
    # Bounds the API threads that event streams may hold, for the same reason.
    streams: threading.BoundedSemaphore


def services() -> Services:
    return current_app.extensions["ferry"]
