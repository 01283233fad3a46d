"""What a running batch of a cancelable model asks: have all its predictions been canceled?"""
from __future__ import annotations

import logging
import time

import redis

from tasks.records import PredictionStore

log = logging.getLogger(__name__)
# A model may check in a tight loop; Redis is asked at most this often.
MIN_INTERVAL_S = 0.25


class CancelCheck:
    def __init__(self, store: PredictionStore, ids: list[str], min_interval_s: float = MIN_INTERVAL_S,
                 clock=time.monotonic):
        self.store = store
        self.ids = ids
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._asked_at: float | None = None
        self._canceled = False

    def __call__(self) -> bool:
        now = self.clock()
        if self._canceled or (self._asked_at is not None and now - self._asked_at < self.min_interval_s):
            return self._canceled
        self._asked_at = now
        try:
            self._canceled = len(self.store.cancel_requested(self.ids)) == len(self.ids)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("could not check for cancel requests: %s", exc)  # the run goes on
        return self._canceled
