"""Prediction records in Redis.

    {prefix}prediction:{id}          hash: the record (status, input, output, timings)
    {prefix}events:{id}              pub/sub channel of its status and progress changes: JSON
                                     of the changed fields (a terminal one carries the whole
                                     record but its input), or `progress`
    {prefix}queue-events:{model}:{ver}  pub/sub channel: queued ids of the model were taken
    {prefix}pending:{model}:{ver}    list of queued ids, from which a worker fills a batch
    {prefix}claim:{id}               which worker process runs it now (expires)
    {prefix}claims                   sorted set: id -> claim deadline, for the sweeper

The API creates a record before it queues the task, so an id that was never issued has
no record (404), and the worker writes every status change into it. Every id also has
its own Celery message: a batch takes ids from the pending list, but an id whose batch
dies is redelivered through its message, or re-sent by the sweeper once its claim lapses.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid

import orjson
import redis

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
# Never announced on the pub/sub channel: the input can be large, and these are nobody's business there.
_PRIVATE = ("input", "cache_key", "owner")
# Published on a prediction's channel when its progress changed but not its status.
PROGRESS = "progress"


def new_prediction_id() -> str:
    return uuid.uuid4().hex


def is_prediction_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class PredictionStore:
    def __init__(self, redis, prefix: str = "ferry:", ttl_s: int = 24 * 3600):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._local = threading.local()

    def key(self, prediction_id: str) -> str:
        return f"{self.prefix}prediction:{prediction_id}"

    def channel(self, prediction_id: str) -> str:
        return f"{self.prefix}events:{prediction_id}"

    def queue_channel(self, model: str, version: str) -> str:
        return f"{self.prefix}queue-events:{model}:{version}"

    def create(self, *, model: str, version: str, queue: str, validated_input: dict, cache_key: str,
               owner: str = "", request_id: str = "", prediction_id: str | None = None) -> dict:
        record = {
            "id": prediction_id or new_prediction_id(),
            "model": model,
            "version": version,
            "queue": queue,
            "status": QUEUED,
            "input": json.dumps(validated_input, separators=(",", ":")),
            "cache_key": cache_key,
            "queued_at": repr(time.time()),
            # The id of the API key that made it: only that key may read it.
            "owner": owner,
            # The API request that made it, so that the worker's log lines name it too.
            "request_id": request_id,
        }
        key = self.key(record["id"])
        pending = self.pending_key(model, version)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=record)
        pipe.expire(key, self.ttl_s)
        pipe.rpush(pending, record["id"])
        pipe.expire(pending, self.ttl_s)
        pipe.execute()
        return record

    def get(self, prediction_id: str) -> dict | None:
        record = self.redis.hgetall(self.key(prediction_id))
        return record or None

    def pending_key(self, model: str, version: str) -> str:
        return f"{self.prefix}pending:{model}:{version}"

    def pop_pending(self, model: str, version: str, count: int) -> list[str]:
        if count <= 0:
            return []
        return self.redis.lpop(self.pending_key(model, version), count) or []

    @property
    def claims_key(self) -> str:
        return f"{self.prefix}claims"

    def _claim_on(self, pipe, ids: list[str], worker: str, ttl_s: float) -> None:
        for prediction_id in ids:
            pipe.set(f"{self.prefix}claim:{prediction_id}", worker, nx=True, ex=max(1, int(ttl_s)))
        # nx: never move the deadline of a claim another worker holds.
        pipe.zadd(self.claims_key, {prediction_id: time.time() + ttl_s for prediction_id in ids}, nx=True)

    def claim_and_take(self, own_id: str, worker: str, ttl_s: float, model: str, version: str,
                       count: int) -> tuple[bool, list[str]]:
        """Claim `own_id` and take up to `count` other queued ids, in one round trip.
        Returns whether the claim was won, and the ids taken (none when it was lost: their
        own messages still carry them)."""
        key = self.pending_key(model, version)
        pipe = self.redis.pipeline(transaction=False)
        self._claim_on(pipe, [own_id], worker, ttl_s)
        pipe.lrem(key, 1, own_id)  # queued order: it is near the head, so this stops early
        if count > 0:
            pipe.lpop(key, count)
        results = pipe.execute()
        taken = (results[-1] or []) if count > 0 else []
        return bool(results[0]), taken if results[0] else []

    def claim_records(self, ids: list[str], worker: str, ttl_s: float) -> list[dict]:
        """Claim `ids` and read their records, in one round trip; only the won ones return."""
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        self._claim_on(pipe, ids, worker, ttl_s)
        for prediction_id in ids:
            pipe.hgetall(self.key(prediction_id))
        results = pipe.execute()
        won, records = results[:len(ids)], results[len(ids) + 1:]
        return [record for ok, record in zip(won, records) if ok and record]

    def release(self, ids: list[str], pipe=None) -> None:
        if not ids:
            return
        target = pipe or self.redis.pipeline(transaction=False)
        target.delete(*(f"{self.prefix}claim:{prediction_id}" for prediction_id in ids))
        target.zrem(self.claims_key, *ids)
        if pipe is None:
            target.execute()

    def lapsed_claims(self, now: float | None = None) -> list[str]:
        return self.redis.zrangebyscore(self.claims_key, 0, now or time.time())

    def delete(self, prediction_id: str) -> None:
        self.redis.delete(self.key(prediction_id))

    def update(self, prediction_id: str, status: str, *, pipe=None, record: dict | None = None, **fields) -> None:
        """Write a status change and announce it on the id's channel, as JSON with the fields
        that changed. Given `record` (the record as the caller holds it), a terminal
        announcement carries the whole record but its private fields, so a waiter reads nothing."""
        mapping = {"status": status, **{k: v for k, v in fields.items() if v is not None}}
        target = pipe or self.redis.pipeline(transaction=False)
        target.hset(self.key(prediction_id), mapping=mapping)
        announcement = mapping
        if record is not None and status in TERMINAL:
            announcement = {**{k: v for k, v in record.items() if k not in _PRIVATE}, **mapping}
        target.publish(self.channel(prediction_id), orjson.dumps(announcement))
        if pipe is None:
            target.execute()

    def report_progress(self, prediction_id: str, fraction: float, partial: str | None = None) -> None:
        """Record how far a running prediction has come (and its partial output, encoded);
        never its status, which may have moved on (canceled) meanwhile."""
        mapping = {"progress": repr(fraction)}
        if partial is not None:
            mapping["partial"] = partial
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(prediction_id), mapping=mapping)
        pipe.publish(self.channel(prediction_id), PROGRESS)
        pipe.execute()

    def announce_taken(self, model: str, version: str, pipe) -> None:
        """Queued ids of the model were taken into a batch: the others moved up."""
        pipe.publish(self.queue_channel(model, version), "taken")

    def queue_position(self, record: dict) -> int | None:
        """1 for the next prediction of its model to be taken, 2 after it, ...; None when
        it is not waiting in the model's pending list."""
        index = self.redis.lpos(self.pending_key(record["model"], record["version"]), record["id"])
        return None if index is None else index + 1

    @contextlib.contextmanager
    def watching(self, prediction_id: str):
        """Subscribe to the id's announcements (confirmed) and yield a `Watch`; enter it
        before the prediction is created and queued, so no change can be missed. Each
        thread keeps one subscriber connection from wait to wait."""
        pubsub = getattr(self._local, "pubsub", None)
        if pubsub is None:
            pubsub = self._local.pubsub = self.redis.pubsub()
        channel = self.channel(prediction_id)
        try:
            pubsub.subscribe(channel)
            _confirmed(pubsub, channel)
            yield Watch(self, pubsub, prediction_id)
        finally:
            try:
                pubsub.unsubscribe(channel)  # its confirmation is skipped by the next watch
            except Exception:
                self._local.pubsub = None
                pubsub.close()


class Watch:
    def __init__(self, store: PredictionStore, pubsub, prediction_id: str):
        self.store, self.pubsub, self.prediction_id = store, pubsub, prediction_id
        self.channel = store.channel(prediction_id)

    def wait(self, timeout_s: float) -> dict | None:
        """The record once it is terminal, or as it stands when `timeout_s` runs out."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=remaining)
            if message is None or message["type"] != "message" or message["channel"] != self.channel:
                continue  # leftovers of this thread's earlier watches
            data = message["data"]
            if data.startswith("{"):
                announced = orjson.loads(data)
                if announced["status"] in TERMINAL:
                    return announced if "id" in announced else self.store.get(self.prediction_id)
        return self.store.get(self.prediction_id)


def _confirmed(pubsub, channel: str, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=remaining)
        if message is not None and message["type"] == "subscribe" and message["channel"] == channel:
            return
    raise redis.TimeoutError(f"Redis did not confirm the subscription to {channel} in {timeout_s:g} s.")
