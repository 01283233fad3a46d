"""Celery's entry point: `celery -A tasks.worker worker|beat|flower`."""
from celery.signals import setup_logging

from tasks import logs
from tasks.celery_app import create_celery
from tasks.settings import Settings

settings = Settings.from_env()
celery = create_celery(settings)


@setup_logging.connect
def _logging(loglevel=None, **kwargs):
    """Ferry's log format (text or JSON, with request and prediction ids) in every Celery
    process: workers, beat and Flower."""
    logs.configure(settings.log_format, loglevel or settings.log_level)

from batch_jobs.schedule import beat_schedule  # noqa: E402

celery.conf.beat_schedule = beat_schedule(settings)

import tasks.batch  # noqa: E402,F401  (registers the batch tasks)
import tasks.heartbeat  # noqa: E402,F401  (signal handlers)
import tasks.predict  # noqa: E402,F401  (registers the predict task)
import tasks.startup  # noqa: E402,F401  (start-up checks)
