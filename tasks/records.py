"""Prediction records in Redis: `{prefix}prediction:{id}` hashes plus a status channel.

The API creates a record before it queues the task, so an id that was never issued has
no record (404), and the worker writes every status change into it.
"""
from __future__ import annotations

import json
import time
import uuid

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})


def new_prediction_id() -> str:
    return uuid.uuid4().hex


def is_prediction_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class PredictionStore:
    def __init__(self, redis, prefix: str = "ferry:", ttl_s: int = 24 * 3600):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s

    def key(self, prediction_id: str) -> str:
        return f"{self.prefix}prediction:{prediction_id}"

    def channel(self, prediction_id: str) -> str:
        return f"{self.prefix}events:{prediction_id}"

    def create(self, *, model: str, version: str, queue: str, validated_input: dict, cache_key: str) -> dict:
        record = {
            "id": new_prediction_id(),
            "model": model,
            "version": version,
            "queue": queue,
            "status": QUEUED,
            "input": json.dumps(validated_input, separators=(",", ":")),
            "cache_key": cache_key,
            "queued_at": repr(time.time()),
        }
        key = self.key(record["id"])
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=record)
        pipe.expire(key, self.ttl_s)
        pipe.execute()
        return record

    def get(self, prediction_id: str) -> dict | None:
        record = self.redis.hgetall(self.key(prediction_id))
        return record or None

    def delete(self, prediction_id: str) -> None:
        self.redis.delete(self.key(prediction_id))

    def update(self, prediction_id: str, status: str, **fields) -> None:
        """Write a status change and announce it to anyone waiting on the id."""
        mapping = {"status": status, **{k: v for k, v in fields.items() if v is not None}}
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.key(prediction_id), mapping=mapping)
        pipe.publish(self.channel(prediction_id), status)
        pipe.execute()

    def wait(self, prediction_id: str, timeout_s: float) -> dict | None:
        """The record once it is terminal, or as it stands when `timeout_s` runs out."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe, and see it confirmed, before reading: a change in between is not missed.
            pubsub.subscribe(self.channel(prediction_id))
            pubsub.get_message(timeout=min(timeout_s, 1.0))
            record = self.get(prediction_id)
            deadline = time.monotonic() + timeout_s
            while record is not None and record["status"] not in TERMINAL:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                message = pubsub.get_message(timeout=remaining)
                if message is not None and _text(message["data"]) in TERMINAL:
                    record = self.get(prediction_id)
            return self.get(prediction_id) if record and record["status"] not in TERMINAL else record
        finally:
            pubsub.close()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
