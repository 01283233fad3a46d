"""What a worker process needs, built once per process from the settings."""
from __future__ import annotations

import dataclasses
from functools import lru_cache

import redis
from celery import current_app

from models.cache import PredictionCache
from models.registry import Registry
from models.runtime import RuntimeModels, allowed_hosts
from tasks.leases import LeaseKeeper
from tasks.pool import ModelPool
from tasks.records import PredictionStore
from tasks.request_log import RequestLog
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


def build_registry(settings: Settings, redis_conn) -> Registry:
    """The repository file's models, and those registered at run time in this Redis."""
    runtime = RuntimeModels(redis_conn, settings.key_prefix, settings.runtime_models_max,
                            allowed_hosts(settings.http_model_hosts))
    return Registry.from_file(settings.model_repository, runtime=runtime, refresh_s=settings.registry_refresh_s)


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
    request_log: RequestLog

    @classmethod
    def build(cls, settings: Settings, redis_conn=None, registry: Registry | None = None,
              sender: TaskSender | None = None) -> "WorkerContext":
        redis_conn = redis_conn if redis_conn is not None else redis_client(settings)
        store = PredictionStore(redis_conn, settings.key_prefix, settings.prediction_ttl_s)
        registry = registry or build_registry(settings, redis_conn)
        return cls(
            settings=settings,
            redis=redis_conn,
            registry=registry,
            store=store,
            cache=PredictionCache(redis_conn, settings.key_prefix),
            pool=ModelPool(settings.device, max_models=settings.pool_max_models, memory_mb=settings.pool_memory_mb,
                           idle_s=settings.pool_idle_s, redis=redis_conn, prefix=settings.key_prefix,
                           report_s=settings.heartbeat_s, serves=registry.serves,
                           torch_threads=settings.torch_threads),
            leases=LeaseKeeper(store, settings.claim_lease_s),
            sender=sender or CelerySender(current_app),
            request_log=RequestLog(redis_conn, settings.key_prefix, settings.model_log_max),
        )


@lru_cache(maxsize=1)
def current() -> WorkerContext:
    return WorkerContext.build(Settings.from_env())
