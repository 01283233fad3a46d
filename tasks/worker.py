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


class _BuiltWhenRead:
    """The beat schedule, built when beat first reads it: a bad nightly file stops beat with
    its reason, and never the workers or Flower, which import this module but do not read it.
    Not a Mapping, which Celery's `inspect conf` would walk into (and so build)."""

    def __init__(self, build):
        self._build, self._built = build, None

    def _schedule(self) -> dict:
        if self._built is None:
            self._built = self._build()
        return self._built

    def __getitem__(self, key):
        return self._schedule()[key]

    def __iter__(self):
        return iter(self._schedule())

    def __len__(self):
        return len(self._schedule())

    def keys(self):
        return self._schedule().keys()

    def items(self):
        return self._schedule().items()

    def __repr__(self) -> str:
        return "<the beat schedule: batch_jobs.schedule.beat_schedule, built when beat reads it>"


celery.conf.beat_schedule = _BuiltWhenRead(lambda: beat_schedule(settings))

import tasks.batch  # noqa: E402,F401  (registers the batch tasks)
import tasks.heartbeat  # noqa: E402,F401  (signal handlers)
import tasks.predict  # noqa: E402,F401  (registers the predict task)
import tasks.startup  # noqa: E402,F401  (start-up checks)
