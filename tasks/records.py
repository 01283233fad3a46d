"""Prediction records in Redis.

    {prefix}prediction:{id}          hash: the record (status, input, output, timings)
    {prefix}events:{id}              pub/sub channel of its status and progress changes: JSON
                                     of the changed fields (a terminal one carries the whole
                                     record but its input), or `progress`
    {prefix}queue-events:{model}:{ver}  pub/sub channel: queued ids of the model were taken
    {prefix}pending:{model}:{ver}    list of queued ids, from which a worker fills a batch
    {prefix}claim:{id}               which worker process runs it now: a lease, renewed while it runs
    {prefix}claims                   sorted set: id -> lease deadline (or, waiting to retry, the
                                     time its retry message is overdue), for the sweeper

The API creates a record before it queues the task, so an id that was never issued has
no record (404), and the worker writes every status change into it. Every id also has
its own Celery message, which the record names (`message_list`, `message`) until a worker
takes the id: a batch takes ids from the pending list and withdraws their messages from
the queue, so that no worker spends a task on a prediction already running; an id whose
batch dies is re-sent by the sweeper once its claim lapses.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import uuid
from typing import NamedTuple

import orjson
import redis

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})
# Never announced on the pub/sub channel: the input can be large, and these are nobody's business there.
# `message_list` and `message`: where the prediction's own Celery message waits, until a
# worker takes it into another's batch and withdraws the message (the take script).
_PRIVATE = ("input", "cache_key", "owner", "waiter", "message_list", "message")
# Published on a prediction's channel when its progress changed but not its status.
PROGRESS = "progress"


class Taken(NamedTuple):
    """What `PredictionStore.take` did: "taken", or why the own id was left alone; the own
    record as it was read (None when missing or claimed elsewhere); the others taken."""
    outcome: str
    record: dict | None
    others: list[dict]


def _pairs(fields: list) -> dict:
    return dict(zip(fields[::2], fields[1::2]))


def new_prediction_id() -> str:
    return uuid.uuid4().hex


def is_prediction_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _new_record(model: str, version: str, queue: str, validated_input: dict, cache_key: str, owner: str,
                request_id: str = "", prediction_id: str | None = None, revision: str = "", waiter: str = "") -> dict:
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
    if revision:  # a model registered at run time: which registration of it was asked for
        record["revision"] = revision
    if waiter:  # the channel of the API process waiting for it (Prefer: wait), told when it ends
        record["waiter"] = waiter
    return record


class PredictionStore:
    def __init__(self, redis, prefix: str = "ferry:", ttl_s: int = 24 * 3600):
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._local = threading.local()
        self._scripts: dict = {}
        self._waiters = None

    def key(self, prediction_id: str) -> str:
        return f"{self.prefix}prediction:{prediction_id}"

    def channel(self, prediction_id: str) -> str:
        return f"{self.prefix}events:{prediction_id}"

    def queue_channel(self, model: str, version: str) -> str:
        return f"{self.prefix}queue-events:{model}:{version}"

    def create(self, *, model: str, version: str, queue: str, validated_input: dict, cache_key: str,
               owner: str = "", request_id: str = "", prediction_id: str | None = None) -> dict:
        """A queued prediction in its model's pending list, with no checks (tests, tools)."""
        record = _new_record(model, version, queue, validated_input, cache_key, owner, request_id, prediction_id)
        key = self.key(record["id"])
        pending = self.pending_key(model, version)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=record)
        pipe.expire(key, self.ttl_s)
        pipe.rpush(pending, record["id"])
        pipe.expire(pending, self.ttl_s)
        pipe.execute()
        return record

    def inflight_key(self, owner: str, cache_key: str) -> str:
        # The cache key names the model, its version and the input's hash.
        return f"{self.prefix}inflight:{owner}:{cache_key.removeprefix(self.prefix + 'cache:')}"

    def idempotency_key(self, owner: str, key: str) -> str:
        return f"{self.prefix}idempotency:{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    def idempotent(self, owner: str, key: str) -> tuple[str, str] | None:
        """(fingerprint, prediction id or "" when it was answered from the cache) of the
        first request made with this Idempotency-Key, or None."""
        prior = self.redis.get(self.idempotency_key(owner, key))
        if prior is None:
            return None
        fingerprint, _, prediction_id = prior.partition("|")
        return fingerprint, prediction_id

    def remember_idempotent(self, owner: str, key: str, fingerprint: str) -> None:
        """A request with this key was answered from the cache: remember its body only."""
        self.redis.set(self.idempotency_key(owner, key), f"{fingerprint}|", nx=True, ex=self.ttl_s)

    def submit(self, *, model: str, version: str, queue: str, validated_input: dict, cache_key: str, owner: str,
               queue_pending: list[str], limit: int, request_id: str = "", prediction_id: str | None = None,
               idempotency: tuple[str, str] | None = None, revision: str = "",
               message: tuple[str, str] = ("", ""), waiter: str = "") -> tuple[str, str, dict | None]:
        """Create a queued prediction and push its `message` (a Redis list and the payload
        to push onto it; none when the list is ""), in one atomic step with the checks that
        may stop it:

        - ("replay", id): `idempotency` (key, fingerprint) was used before with this body;
        - ("mismatch", ""): ... with another body;
        - ("joined", id): the same owner has the same input of the same model version
          queued or running: the request shares that prediction;
        - ("full", depth): the queue's pending lists (`queue_pending`) hold `limit` or more;
        - ("created", id): a new record, in the model's pending list.

        The third item is the new record when one was created.
        """
        record = _new_record(model, version, queue, validated_input, cache_key, owner, request_id, prediction_id,
                             revision, waiter)
        prediction_id = record["id"]
        key, fingerprint = idempotency or ("", "")
        message_list, payload = message
        keys = [self.key(prediction_id), self.pending_key(model, version), self.inflight_key(owner, cache_key),
                self.idempotency_key(owner, key), message_list, *queue_pending]
        args = [prediction_id, self.ttl_s, self.prefix, fingerprint, limit, payload,
                *(item for pair in record.items() for item in pair)]
        outcome, value = self._script("submit", _SUBMIT)(keys=keys, args=args)
        return outcome, value, record if outcome == "created" else None

    def cancel(self, record: dict, cancelable: bool) -> str:
        """Cancel a prediction: "canceled" when it was queued (or was canceled already);
        "requested" when it runs on a model that can stop (it stops at its next check);
        "running" when it runs on one that cannot; or its status when it has finished."""
        prediction_id = record["id"]
        keys = [self.key(prediction_id), self.claim_key(prediction_id),
                self.pending_key(record["model"], record["version"]), self.claims_key]
        return self._script("cancel", _CANCEL)(
            keys=keys, args=[prediction_id, int(cancelable), repr(time.time()), self.channel(prediction_id)])

    def cancel_requested(self, ids: list[str]) -> set[str]:
        pipe = self.redis.pipeline(transaction=False)
        for prediction_id in ids:
            pipe.hexists(self.key(prediction_id), "cancel_requested")
        return {prediction_id for prediction_id, asked in zip(ids, pipe.execute()) if asked}

    def get(self, prediction_id: str) -> dict | None:
        record = self.redis.hgetall(self.key(prediction_id))
        return record or None

    def fail_queued(self, model: str, version: str, revision: str, error: str) -> list[str]:
        """Fail the predictions for this registration (`revision`) of a model version still
        waiting in its pending list (it was removed), atomically against workers taking them;
        returns their ids."""
        return self._script("fail_queued", _FAIL_QUEUED)(
            keys=[self.pending_key(model, version)], args=[self.prefix, error, repr(time.time()), revision])

    def pending_key(self, model: str, version: str) -> str:
        return f"{self.prefix}pending:{model}:{version}"

    def stale_pending(self, model: str, version: str, before: float, limit: int = 10) -> list[str]:
        """Up to `limit` of the oldest queued ids that were queued (or last re-sent) before
        `before` and are claimed by nobody; each is marked as re-sent now. Ids whose record
        has expired leave the list."""
        key = self.pending_key(model, version)
        ids = self.redis.lrange(key, 0, limit - 1)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for prediction_id in ids:
            pipe.hmget(self.key(prediction_id), "status", "queued_at", "resent_at")
            pipe.exists(self.claim_key(prediction_id))
        results = pipe.execute()
        stale, pipe = [], self.redis.pipeline(transaction=False)
        for prediction_id, (status, queued_at, resent_at), claimed in zip(ids, results[::2], results[1::2]):
            if status is None:
                pipe.lrem(key, 1, prediction_id)
            elif status == QUEUED and not claimed and float(resent_at or queued_at) < before:
                pipe.hset(self.key(prediction_id), "resent_at", repr(time.time()))
                stale.append(prediction_id)
        pipe.execute()
        return stale

    @property
    def claims_key(self) -> str:
        return f"{self.prefix}claims"

    def take(self, worker: str, ttl_s: float, model: str, version: str, count: int, *, started_at: str | None = None,
             revision: str = "", own_id: str = "", not_before: float = 0.0) -> Taken:
        """In one atomic step (one round trip): claim `own_id` (when given) and take it off
        the model's pending list, then take up to `count` more ids off the list and claim
        them; every prediction claimed is marked running (`started_at`, its attempts counted,
        announced) and comes back as its record. So a queued prediction is always either in
        the pending list or claimed, even when the worker dies in between.

        `own_id` is left alone, unclaimed, when it is missing ("missing"), finished (its
        status), waiting to retry after `not_before` ("waiting"), queued for another
        registration than `revision` ("stale"), or claimed by another worker ("claimed");
        other ids taken are claimed only when they are queued (or running, re-queued by the
        sweeper) for `revision`."""
        outcome, own, taken = self._script("take", _TAKE)(
            keys=[self.claims_key, self.pending_key(model, version)],
            args=[self.prefix, worker, max(1, int(ttl_s)), time.time() + ttl_s, own_id, max(0, count), revision,
                  started_at or repr(time.time()), repr(not_before), self.queue_channel(model, version)])
        return Taken(outcome, _pairs(own) if own else None, [_pairs(fields) for fields in taken])

    def requeue(self, prediction_id: str, model: str, version: str) -> None:
        """Back at the head of the pending list, unclaimed (the sweeper sends it a message)."""
        pipe = self.redis.pipeline(transaction=False)
        self.release([prediction_id], pipe=pipe)
        pipe.lpush(self.pending_key(model, version), prediction_id)
        pipe.execute()

    def expect_claim(self, pipe, deadlines: dict[str, float]) -> None:
        """Enter ids in the claims index without claiming them: unless something claims
        (and then releases) them by their deadline, the sweeper re-sends them."""
        if deadlines:
            pipe.zadd(self.claims_key, deadlines)

    def release(self, ids: list[str], pipe=None) -> None:
        if not ids:
            return
        target = pipe or self.redis.pipeline(transaction=False)
        target.delete(*(self.claim_key(prediction_id) for prediction_id in ids))
        target.zrem(self.claims_key, *ids)
        if pipe is None:
            target.execute()

    def renew(self, ids: list[str], worker: str, ttl_s: float) -> int:
        """Extend the leases that `worker` still holds on `ids`; returns how many it held."""
        if not ids:
            return 0
        keys = [self.claims_key, *(self.claim_key(prediction_id) for prediction_id in ids)]
        return self._script("renew", _RENEW)(keys=keys, args=[worker, max(1, int(ttl_s)), time.time() + ttl_s, *ids])

    def claim_key(self, prediction_id: str) -> str:
        return f"{self.prefix}claim:{prediction_id}"

    def is_claimed(self, prediction_id: str) -> bool:
        return bool(self.redis.exists(self.claim_key(prediction_id)))

    def lapsed_claims(self, now: float | None = None) -> list[str]:
        return self.redis.zrangebyscore(self.claims_key, 0, now or time.time())

    def _script(self, name: str, source: str):
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(source)
        return self._scripts[name]

    def delete(self, prediction_id: str) -> None:
        self.redis.delete(self.key(prediction_id))

    def update(self, prediction_id: str, status: str, *, pipe=None, record: dict | None = None, **fields) -> None:
        """Write a status change and announce it on the id's channel, as JSON with the fields
        that changed. Given `record` (the record as the caller holds it), a success is
        announced with the whole record but its private fields, so a waiter reads nothing
        back, and a terminal status goes to the channel of the API process waiting for it too
        (`waiter`). A failure or cancel is announced with its changes only, and waiters read
        the record: progress and retry notes written while it ran are not in the caller's copy."""
        mapping = {"status": status, **{k: v for k, v in fields.items() if v is not None}}
        target = pipe or self.redis.pipeline(transaction=False)
        target.hset(self.key(prediction_id), mapping=mapping)
        announcement = mapping
        if record is not None and status in TERMINAL:
            if status == SUCCEEDED:
                announcement = {**{k: v for k, v in record.items() if k not in _PRIVATE}, **mapping}
            if record.get("waiter"):
                told = announcement if status == SUCCEEDED else {"id": prediction_id, "status": status}
                target.publish(record["waiter"], orjson.dumps(told))
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

    def ended(self, prediction_id: str, announced: dict) -> dict | None:
        """The record of a prediction announced as terminal: the announcement when it is the
        whole record (a success), else read back (`update`)."""
        return announced if "model" in announced else self.get(prediction_id)

    def queue_position(self, record: dict) -> int | None:
        """1 for the next prediction of its model to be taken, 2 after it, ...; None when
        it is not waiting in the model's pending list."""
        index = self.redis.lpos(self.pending_key(record["model"], record["version"]), record["id"])
        return None if index is None else index + 1

    def waiting(self, prediction_id: str):
        """A context that yields a `Wait` for a prediction this process is about to create,
        with its record's `waiter` channel: the process's one subscription (tasks/waiters.py)."""
        if self._waiters is None:
            from tasks.waiters import ProcessWaiters

            self._waiters = ProcessWaiters(self)
        return self._waiters.waiting(prediction_id)

    @contextlib.contextmanager
    def watching(self, prediction_id: str):
        """Subscribe to the id's announcements (confirmed) and yield a `Watch`; enter it
        before the prediction can end, so no change can be missed. For a prediction made by
        another request, whose record cannot name this process as its waiter. Each thread
        keeps one subscriber connection from wait to wait."""
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
                    return self.store.ended(self.prediction_id, announced)
        return self.store.get(self.prediction_id)


def _confirmed(pubsub, channel: str, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=remaining)
        if message is not None and message["type"] == "subscribe" and message["channel"] == channel:
            return
    raise redis.TimeoutError(f"Redis did not confirm the subscription to {channel} in {timeout_s:g} s.")


# KEYS: the record, its pending list, its in-flight key, its idempotency key, the list its
# message goes onto ("": none), then the pending lists of its queue. ARGV: id, ttl, prefix,
# fingerprint ("" without an idempotency key), queue limit (0: none), the message, then the
# record's fields and values.
_SUBMIT = """
local unpack = unpack or table.unpack
local id, ttl, prefix, fingerprint, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local function status_of(prediction_id)
    return redis.call('HGET', prefix .. 'prediction:' .. prediction_id, 'status')
end
if fingerprint ~= '' then
    local prior = redis.call('GET', KEYS[4])
    if prior then
        local bar = string.find(prior, '|', 1, true)
        if string.sub(prior, 1, bar - 1) ~= fingerprint then
            return {'mismatch', ''}
        end
        local first = string.sub(prior, bar + 1)
        if first ~= '' and status_of(first) then
            return {'replay', first}
        end
    end
end
local leader = redis.call('GET', KEYS[3])
if leader then
    local status = status_of(leader)
    if status == 'queued' or status == 'running' then
        if fingerprint ~= '' then
            redis.call('SET', KEYS[4], fingerprint .. '|' .. leader, 'EX', ttl)
        end
        return {'joined', leader}
    end
end
if limit > 0 then
    local depth = 0
    for i = 6, #KEYS do
        depth = depth + redis.call('LLEN', KEYS[i])
    end
    if depth >= limit then
        return {'full', tostring(depth)}
    end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('RPUSH', KEYS[2], id)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], id, 'EX', ttl)
if fingerprint ~= '' then
    redis.call('SET', KEYS[4], fingerprint .. '|' .. id, 'EX', ttl)
end
if KEYS[5] ~= '' then
    redis.call('LPUSH', KEYS[5], ARGV[6])
    redis.call('HSET', KEYS[1], 'message_list', KEYS[5], 'message', ARGV[6])
end
return {'created', id}
"""

# KEYS: the record, its claim key, its pending list, the claims sorted set; ARGV: id,
# cancelable (1 or 0), now, its event channel.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
    return 'missing'
end
if status == 'succeeded' or status == 'failed' or status == 'canceled' then
    return status
end
if status == 'queued' and redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[3])
    redis.call('HDEL', KEYS[1], 'retry_at', 'message_list', 'message')
    redis.call('LREM', KEYS[3], 0, ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[1])
    redis.call('PUBLISH', ARGV[4], cjson.encode({status = 'canceled', finished_at = ARGV[3]}))
    local waiter = redis.call('HGET', KEYS[1], 'waiter')
    if waiter then
        redis.call('PUBLISH', waiter, cjson.encode({id = ARGV[1], status = 'canceled'}))
    end
    return 'canceled'
end
if ARGV[2] == '1' then
    redis.call('HSET', KEYS[1], 'cancel_requested', ARGV[3])
    return 'requested'
end
return 'running'
"""

# KEYS: the claims sorted set, the pending list; ARGV: prefix, worker, ttl, deadline, own id or "",
# count, revision, started_at, not_before, the model's queue channel. Returns the outcome, the own record (flat) and the
# records of the others taken.
_TAKE = """
local prefix, worker, ttl, deadline, own = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local count, revision, started = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local function field(fields, name)
    for i = 1, #fields, 2 do
        if fields[i] == name then
            return fields[i + 1]
        end
    end
    return nil
end
local function claim(id)
    if redis.call('SET', prefix .. 'claim:' .. id, worker, 'NX', 'EX', ttl) then
        redis.call('ZADD', KEYS[1], deadline, id)
        return true
    end
    return false
end
-- A record as the worker needs it, and where its own message waits (nil, nil when it names none).
local function record_of(key)
    local fields, kept, list, message = redis.call('HGETALL', key), {}, nil, nil
    for i = 1, #fields, 2 do
        if fields[i] == 'message_list' then
            list = fields[i + 1]
        elseif fields[i] == 'message' then
            message = fields[i + 1]
        else
            kept[#kept + 1] = fields[i]
            kept[#kept + 1] = fields[i + 1]
        end
    end
    return kept, list, message
end
local claimed = {}
local own_fields = {}
if own ~= '' then
    local key = prefix .. 'prediction:' .. own
    local list
    own_fields, list = record_of(key)
    local status = field(own_fields, 'status')
    if not status then
        return {'missing', {}, {}}
    end
    if status == 'succeeded' or status == 'failed' or status == 'canceled' then
        return {status, own_fields, {}}
    end
    if tonumber(field(own_fields, 'retry_at') or '0') > tonumber(ARGV[9]) then
        return {'waiting', own_fields, {}}
    end
    if (field(own_fields, 'revision') or '') ~= revision then
        return {'stale', own_fields, {}}
    end
    if not claim(own) then
        return {'claimed', {}, {}}
    end
    redis.call('LREM', KEYS[2], 1, own)
    if list then  -- its message is the one running
        redis.call('HDEL', key, 'message_list', 'message')
    end
    claimed[1] = own
end
local taken = {}
if count > 0 then
    for _, id in ipairs(redis.call('LPOP', KEYS[2], count) or {}) do
        local key = prefix .. 'prediction:' .. id
        local fields, list, message = record_of(key)
        local status = field(fields, 'status')
        -- An id whose record expired, finished or belongs to another registration is
        -- dropped from the list; its own message settles it.
        if (status == 'queued' or status == 'running') and (field(fields, 'revision') or '') == revision
                and claim(id) then
            -- Taken into this batch, it no longer needs its own message: withdrawn from its
            -- queue, no worker process spends a task on it; its claim and the sweeper now see
            -- it through. It is looked for among the oldest messages only, where it most
            -- likely is, so that a long queue is never scanned whole (Redis does nothing else
            -- meanwhile); one not found (fetched already, or further in) runs and finds its
            -- prediction claimed or done.
            if list then
                if redis.call('LPOS', list, message, 'RANK', -1, 'MAXLEN', 256) then
                    redis.call('LREM', list, -1, message)
                end
                redis.call('HDEL', key, 'message_list', 'message')
            end
            claimed[#claimed + 1] = id
            taken[#taken + 1] = fields
        end
    end
end
local announcement = cjson.encode({status = 'running', started_at = started, batch_size = #claimed})
for _, id in ipairs(claimed) do
    local key = prefix .. 'prediction:' .. id
    redis.call('HSET', key, 'status', 'running', 'started_at', started, 'batch_size', #claimed)
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('PUBLISH', prefix .. 'events:' .. id, announcement)
end
if #claimed > 0 then
    redis.call('PUBLISH', ARGV[10], 'taken')
end
return {'taken', own_fields, taken}
"""

# KEYS: the pending list; ARGV: prefix, error, now, revision.
_FAIL_QUEUED = """
local unpack = unpack or table.unpack
local failed = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    local record = ARGV[1] .. 'prediction:' .. id
    local status, revision = unpack(redis.call('HMGET', record, 'status', 'revision'))
    if not status then
        redis.call('LREM', KEYS[1], 0, id)
    elseif status == 'queued' and (revision or '') == ARGV[4]
            and redis.call('EXISTS', ARGV[1] .. 'claim:' .. id) == 0 then
        redis.call('HSET', record, 'status', 'failed', 'error', ARGV[2], 'finished_at', ARGV[3])
        redis.call('HDEL', record, 'message_list', 'message')
        redis.call('PUBLISH', ARGV[1] .. 'events:' .. id,
                   cjson.encode({status = 'failed', error = ARGV[2], finished_at = ARGV[3]}))
        local waiter = redis.call('HGET', record, 'waiter')
        if waiter then
            redis.call('PUBLISH', waiter, cjson.encode({id = id, status = 'failed'}))
        end
        redis.call('LREM', KEYS[1], 0, id)
        failed[#failed + 1] = id
    end
end
return failed
"""

# KEYS: the claims sorted set, then one claim key per id; ARGV: worker, ttl, deadline, ids.
_RENEW = """
local held = 0
for i = 2, #KEYS do
    if redis.call('GET', KEYS[i]) == ARGV[1] then
        redis.call('EXPIRE', KEYS[i], ARGV[2])
        redis.call('ZADD', KEYS[1], ARGV[3], ARGV[i + 2])
        held = held + 1
    end
end
return held
"""

