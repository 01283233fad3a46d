"""What a worker process needs, built once per process from the settings."""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import redis
from celery import current_app

from models.cache import PredictionCache
from models.registry import Registry
from tasks.leases import LeaseKeeper
from tasks.pool import ModelPool
from tasks.records import PredictionStore
from tasks.senders import CelerySender, TaskSender
from tasks.settings import Settings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )


@dataclasses.dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    registry: Registry
    store: PredictionStore
    cache: PredictionCache
    pool: ModelPool
    leases: LeaseKeeper
    # Re-queues predictions that failed transiently.
    sender: TaskSender

    @classmethod
    def build(cls, settings: Settings, redis_conn=None, registry: Registry | None = None,
              sender: TaskSender | None = None) -> "WorkerContext":
        redis_conn = redis_conn if redis_conn is not None else redis_client(settings)
        store = PredictionStore(redis_conn, settings.key_prefix, settings.prediction_ttl_s)
        return cls(
            settings=settings,
            redis=redis_conn,
            registry=registry or Registry.from_file(settings.model_repository),
            store=store,
            cache=PredictionCache(redis_conn, settings.key_prefix),
            pool=ModelPool(settings.device),
            leases=LeaseKeeper(store, settings.claim_lease_s),
            sender=sender or CelerySender(current_app),
        )


@lru_cache(maxsize=1)
def current() -> WorkerContext:
    return WorkerContext.build(Settings.from_env())
