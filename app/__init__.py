"""Ferry's HTTP API: `create_app()` builds it; each subsystem has its own `init_app`."""
from __future__ import annotations

import threading

from flask import Flask

from app import auth, dashboard, docs, errors, fast_path, metrics, ratelimit, request_ids
from app.keys import KeyStore
from app.resources import batch_jobs, health, models, predictions
from app.services import Services
from batch_jobs.sources import PopularityCounter
from models.cache import PredictionCache
from tasks import logs
from tasks.context import build_registry
from tasks.records import PredictionStore
from tasks.request_log import RequestLog
from tasks.senders import CelerySender, TaskSender
from tasks.settings import Settings


def create_app(test_config: dict | None = None, *, redis_client=None, sender: TaskSender | None = None) -> Flask:
    """Build the API. `test_config` overrides settings (lower-case names) and Flask config
    (upper-case names); `redis_client` and `sender` replace the real Redis and Celery."""
    test_config = dict(test_config or {})
    flask_config = {key: test_config.pop(key) for key in list(test_config) if key.isupper()}
    settings = Settings.from_env(**test_config)

    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_content_length,
        API_TITLE="Ferry",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=docs.STATIC_URL,
        # No call to the public spec validator: /docs stays offline and private.
        OPENAPI_SWAGGER_UI_CONFIG={"validatorUrl": None},
        **flask_config,
    )
    logs.configure(settings.log_format, settings.log_level)

    if redis_client is None:
        from tasks.context import redis_client as connect

        redis_client = connect(settings)
    if sender is None:
        from tasks.celery_app import create_celery

        sender = CelerySender(create_celery(settings))
    registry = build_registry(settings, redis_client)
    app.extensions["ferry"] = Services(
        settings=settings,
        redis=redis_client,
        registry=registry,
        runtime=registry.runtime,
        request_log=RequestLog(redis_client, settings.key_prefix, settings.model_log_max),
        store=PredictionStore(redis_client, settings.key_prefix, settings.prediction_ttl_s),
        cache=PredictionCache(redis_client, settings.key_prefix),
        sender=sender,
        popularity=PopularityCounter(settings.key_prefix, settings.popular_max, settings.popular_max_input_bytes),
        waiters=threading.BoundedSemaphore(settings.max_waiters),
        streams=threading.BoundedSemaphore(settings.max_event_streams),
        keys=KeyStore(redis_client, settings.key_prefix, settings.admin_key, settings.key_cache_s),
    )

    # First, so that every later hook's log lines (and refusals) carry the request id.
    request_ids.init_app(app)
    api = errors.FerryApi(app)
    auth.document(api)
    for blueprint in (models.blp, predictions.blp, batch_jobs.blp, health.blp):
        api.register_blueprint(blueprint)
    errors.init_app(app, settings.retry_after_s)
    docs.document_models(api, app.extensions["ferry"].registry, settings)
    docs.init_app(app)
    metrics.init_app(app)
    dashboard.init_app(app)
    # Last, so that metrics see the 429s too.
    ratelimit.init_app(app, settings, redis_client)
    # In front of all of it: plain submits are answered beneath Flask (app/fast_path.py).
    fast_path.install(app)
    return app
