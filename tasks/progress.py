"""The callback a running batch gives its model: progress reports into the records."""
from __future__ import annotations

import logging
import math
import time

import redis

from models.base import encode_output
from tasks.records import PredictionStore

log = logging.getLogger(__name__)
# A model may report in a tight loop; watchers need no more than this many updates a second.
MIN_INTERVAL_S = 0.1
# Partial outputs ride every update; bigger ones are left out (the progress still goes).
MAX_PARTIAL_BYTES = 64 * 1024


class ProgressReporter:
    def __init__(self, store: PredictionStore, ids: list[str], min_interval_s: float = MIN_INTERVAL_S,
                 clock=time.monotonic):
        self.store = store
        self.ids = ids
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: dict[int, float] = {}

    def __call__(self, index: int, fraction: float, partial: dict | None = None) -> None:
        if not 0 <= index < len(self.ids):
            raise IndexError(f"report_progress: item {index} is not in this batch of {len(self.ids)}. "
                             "Hint: pass the index of the input in the list that predict received.")
        fraction = float(fraction)
        if not math.isfinite(fraction):
            raise ValueError("report_progress: fraction must be a number between 0 and 1.")
        fraction = min(max(fraction, 0.0), 1.0)
        now = self.clock()
        if fraction < 1.0 and now - self._last.get(index, -math.inf) < self.min_interval_s:
            return
        encoded = None if partial is None else encode_output(
            partial, what="report_progress: the partial output", must="a partial output is a dict")
        self._last[index] = now
        if encoded is not None and len(encoded) > MAX_PARTIAL_BYTES:
            log.warning("partial output of %s is %d bytes; only its progress is shown", self.ids[index], len(encoded))
            encoded = None
        try:
            self.store.report_progress(self.ids[index], fraction, encoded)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Progress is for watchers; the prediction itself goes on.
            log.warning("progress of %s not recorded: %s", self.ids[index], exc)
