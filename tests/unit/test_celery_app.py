"""How the Celery app is configured for the worker's event loop."""
from tasks.celery_app import Consumer, EventsFlush, create_celery
from tasks.settings import Settings


class Hub:
    def __init__(self):
        self.later = []

    def call_later(self, delay, callback, *args):
        self.later.append((delay, callback))


def test_task_events_are_flushed_together_once_per_interval():
    now, flushed, hub = [100.0], [], Hub()
    flush = EventsFlush(lambda: flushed.append(now[0]), interval_s=0.1, clock=lambda: now[0])
    flush(hub)
    now[0] += 0.05
    flush(hub)  # within the interval: the flush already scheduled takes it
    assert [delay for delay, _ in hub.later] == [0.1] and flushed == []
    now[0] += 0.05
    hub.later.pop()[1]()
    assert flushed == [100.1]
    flush(hub)  # buffered after that flush: a new one
    assert len(hub.later) == 1


def test_the_worker_uses_the_consumer_that_gathers_events():
    celery = create_celery(Settings(redis_url="redis://unused:1/0"))
    assert celery.conf.worker_send_task_events is True
    assert celery.conf.worker_consumer == "tasks.celery_app:Consumer"
    assert Consumer.on_send_event_buffered is not Consumer.__mro__[1].on_send_event_buffered
