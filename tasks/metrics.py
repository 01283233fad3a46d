"""Worker-side metrics, kept in Redis so that the API's `/metrics` shows every worker's.

Workers run on many machines and in short-lived processes, so they do not serve metrics
themselves: each batch adds its observations to one hash, in the pipeline that already
writes the batch's results (no extra round trip), and the API turns that hash into
Prometheus counters and histograms when it is scraped.

    {prefix}metrics:worker    hash: "{metric}|{model}|{bucket upper bound, or sum}" -> value

Histogram buckets are stored as plain (not cumulative) counts and added up when read.
Every API replica shows the same totals: scrape one, or aggregate replicas with max().
"""
from __future__ import annotations

import bisect
import logging
import math
from collections import defaultdict
from dataclasses import dataclass

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from tasks.celery_app import BATCH_QUEUE

log = logging.getLogger(__name__)

# kombu's Redis transport keeps each queue as a list, with a sibling list per priority step.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class HistogramDef:
    name: str
    help: str
    buckets: tuple[float, ...]


_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PREDICT_SECONDS = HistogramDef("ferry_worker_predict_duration_seconds",
                               "Time of one forward pass (a whole batch) on a worker.", _SECONDS)
BATCH_SIZE = HistogramDef("ferry_worker_batch_size", "Predictions that shared one forward pass.",
                          (1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
QUEUE_WAIT = HistogramDef("ferry_worker_queue_wait_seconds",
                          "Time from a prediction's submission to the start of its forward pass.", _SECONDS)
HISTOGRAMS = (PREDICT_SECONDS, BATCH_SIZE, QUEUE_WAIT)

COMPLETED = "ferry_predictions_completed_total"
FAILED = "ferry_predictions_failed_total"
COUNTERS = {COMPLETED: "Predictions that succeeded on a worker.", FAILED: "Predictions that failed."}


def metrics_key(prefix: str) -> str:
    return f"{prefix}metrics:worker"


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


class Observations:
    """Counts gathered while a batch runs; `write(pipe)` adds them to the Redis hash."""

    def __init__(self, prefix: str):
        self.key = metrics_key(prefix)
        self._counts: dict[str, int] = defaultdict(int)
        self._sums: dict[str, float] = defaultdict(float)

    def observe(self, histogram: HistogramDef, model: str, value: float) -> None:
        index = bisect.bisect_left(histogram.buckets, value)
        bound = histogram.buckets[index] if index < len(histogram.buckets) else math.inf
        self._counts[f"{histogram.name}|{model}|{_bound(bound)}"] += 1
        self._sums[f"{histogram.name}|{model}|sum"] += value

    def count(self, counter: str, model: str, amount: int = 1) -> None:
        if amount:
            self._counts[f"{counter}|{model}|total"] += amount

    def write(self, pipe) -> None:
        for field, amount in self._counts.items():
            pipe.hincrby(self.key, field, amount)
        for field, amount in self._sums.items():
            pipe.hincrbyfloat(self.key, field, amount)


def queue_lists(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]


class RedisCollector:
    """A prometheus_client collector for what lives in Redis: worker metrics and queue depths."""

    def __init__(self, redis, prefix: str, registry):
        self.redis = redis
        self.prefix = prefix
        self.registry = registry

    def collect(self):
        queues = sorted(self.registry.queues | {BATCH_QUEUE})
        specs = self.registry.specs()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(metrics_key(self.prefix))
        for queue in queues:
            for name in queue_lists(queue):
                pipe.llen(name)
        for spec in specs:
            pipe.llen(f"{self.prefix}pending:{spec.name}:{spec.version}")
        up = GaugeMetricFamily("ferry_redis_up", "Whether the API reached Redis for this scrape.")
        try:
            results = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The API's own metrics are still worth serving when Redis is away.
            log.warning("metrics: Redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        stored, lengths = results[0], results[1:]

        depth = GaugeMetricFamily("ferry_queue_depth", "Messages waiting in a Celery queue (not yet taken by a "
                                  "worker).", labels=["queue"])
        for i, queue in enumerate(queues):
            per_queue = len(_PRIORITY_STEPS)
            depth.add_metric([queue], sum(lengths[i * per_queue:(i + 1) * per_queue]))
        yield depth
        pending = GaugeMetricFamily("ferry_pending_predictions", "Predictions queued for a model and not yet "
                                    "taken into a batch.", labels=["model", "version"])
        for spec, length in zip(specs, lengths[len(queues) * len(_PRIORITY_STEPS):]):
            pending.add_metric([spec.name, spec.version], length)
        yield pending
        yield from _families(stored)


def _families(stored: dict) -> list:
    """Counter and histogram families from the hash's fields."""
    values: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for field, raw in stored.items():
        name, _, rest = field.partition("|")
        model, _, suffix = rest.rpartition("|")
        values[(name, model)][suffix] = float(raw)
    families = []
    for name, help_text in COUNTERS.items():
        family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=["model"])
        for (metric, model), fields in sorted(values.items()):
            if metric == name:
                family.add_metric([model], fields.get("total", 0.0))
        families.append(family)
    for histogram in HISTOGRAMS:
        family = HistogramMetricFamily(histogram.name, histogram.help, labels=["model"])
        for (metric, model), fields in sorted(values.items()):
            if metric != histogram.name:
                continue
            cumulative, buckets = 0.0, []
            for bound in (*histogram.buckets, math.inf):
                cumulative += fields.get(_bound(bound), 0.0)
                buckets.append((_bound(bound), cumulative))
            family.add_metric([model], buckets, fields.get("sum", 0.0))
        families.append(family)
    return families
