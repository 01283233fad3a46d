"""Rate limits per API key, counted in the API's own Redis by one Lua script.

One budget per key across every guarded and open route (`FERRY_RATE_LIMIT`, e.g.
"100/second;3000/minute"); a request without a valid key counts against its address.
Health probes, metrics and the API's documentation are never limited. Past the budget: 429 with
`Retry-After`, in the one error body.

    {prefix}ratelimit:{key:{id} | addr:{address}}    hash of sliding-window counters; expires
                                                      when idle for twice the longest window

Why not flask-limiter: it costs a round trip per limit, each a write that `appendfsync
always` makes wait for the disk. Here every limit of a request is checked and counted in one
atomic script (so the budget holds across processes and machines, and a refused request
consumes nothing), and a submit's cache read rides in that same script: a cache hit is one
round trip. The script tells Redis not to propagate its writes (`redis.set_repl`), so the
counters never reach the append-only file or replicas and a hit waits for no fsync. The
counters are ephemeral: a Redis restart or a failover starts every window afresh. A hit
answered beneath Flask (app/fast_path.py) is counted there, in the same one script, and so
is a new submit it queues; one it hands on to Flask after counting is not counted again.

The algorithm is the sliding-window counter of the `limits` package (which parses the limits
here): the previous window's count, weighted by how much of it still overlaps the sliding
window, plus the current window's count.
"""
from __future__ import annotations

import math
from flask import current_app, g, jsonify, request
from limits import RateLimitItem, parse_many
from werkzeug.exceptions import TooManyRequests

from app.auth import current_key
from app.errors import error_body
from app.keys import PREDICT
from models.registry import UnknownModel

# Probes and scrapes must answer while a caller floods the API, and the docs and the
# dashboard's own files say how to call it.
UNLIMITED = frozenset({"health", "metrics", "api-docs", "swagger_ui_static", "dashboard", "static"})
# A submit counted, and looked up in the cache in vain, beneath Flask (app/fast_path.py),
# then handed on: its WSGI environ holds (validated input, cache key) under this key, and
# nothing counts it again.
MISSED_BENEATH = "ferry.missed"
# A submit is counted where it reads the cache (`counted_get`), in the same round trip.
SUBMIT = "predictions.Submissions"

# KEYS[1]: the caller's counters; KEYS[2] (optional): a key to GET once the request is allowed.
# ARGV: limit, window in ms, for each limit. Returns {0, 0, value} or {limit number, retry ms, false}.
# Fields per limit i: i.w (the current window's number), i.c (its count), i.p (the previous one's).
_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
if redis.set_repl then redis.set_repl(redis.REPL_NONE) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #ARGV / 2
local fields = {}
for i = 1, n do
  fields[#fields + 1] = i .. '.w'; fields[#fields + 1] = i .. '.c'; fields[#fields + 1] = i .. '.p'
end
local stored = redis.call('HMGET', KEYS[1], unpack(fields))
local update, longest = {}, 0
for i = 1, n do
  local limit, period = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local window = math.floor(now / period)
  local was = tonumber(stored[3 * i - 2]) or -1
  local cur, prev = 0, 0
  if was == window then
    cur, prev = tonumber(stored[3 * i - 1]) or 0, tonumber(stored[3 * i]) or 0
  elseif was == window - 1 then
    prev = tonumber(stored[3 * i - 1]) or 0
  end
  local left = period - (now - window * period)
  if math.floor(prev * left / period) + cur + 1 > limit then
    local wait
    if cur >= limit then
      wait = left + math.max(0, period * (1 - limit / cur))
    else
      wait = math.max(0, left - period * (limit - cur) / prev)
    end
    return {i, math.ceil(wait), false}
  end
  update[#update + 1] = i .. '.w'; update[#update + 1] = window
  update[#update + 1] = i .. '.c'; update[#update + 1] = cur + 1
  update[#update + 1] = i .. '.p'; update[#update + 1] = prev
  if period > longest then longest = period end
end
redis.call('HSET', KEYS[1], unpack(update))
redis.call('PEXPIRE', KEYS[1], 2 * longest)
local value = false
if KEYS[2] then value = redis.call('GET', KEYS[2]) end
return {0, 0, value}
"""


class RateLimited(TooManyRequests):
    def __init__(self, limit: RateLimitItem, retry_after_s: float):
        super().__init__(str(limit))
        self.limit = limit
        self.retry_after_s = retry_after_s


class RateLimiter:
    def __init__(self, redis, prefix: str, limits: str):
        try:
            self.limits = parse_many(limits)
        except ValueError:
            raise ValueError(f"FERRY_RATE_LIMIT={limits!r} is not a rate limit such as "
                             "'100/second;3000/minute'.") from None
        self.prefix = f"{prefix}ratelimit:"
        self.args = [part for limit in self.limits for part in (limit.amount, limit.get_expiry() * 1000)]
        self.script = redis.register_script(_SCRIPT)

    def hit(self, identity: str, also_get: str | None = None) -> str | None:
        """Count one request of `identity`, or raise RateLimited; with `also_get`, that key's
        value (read only when the request is allowed)."""
        keys = [self.prefix + identity] if also_get is None else [self.prefix + identity, also_get]
        refused, retry_ms, value = self.script(keys=keys, args=self.args)
        if refused:
            raise RateLimited(self.limits[refused - 1], retry_ms / 1000)
        return value or None


def key_identity(api_key) -> str:
    """Whose budget a request with a valid key spends."""
    return f"key:{api_key.id}"


def rate_key() -> str:
    api_key = current_key()
    return key_identity(api_key) if api_key is not None else f"addr:{request.remote_addr}"


def _limiter() -> RateLimiter:
    return current_app.extensions["ferry_ratelimit"]


def counted_get(redis, key: str) -> str | None:
    """GET `key`; a submit whose count was left to its cache read is counted (or refused)
    in the same round trip."""
    identity = g.pop("ferry_rate_pending", None)
    if identity is None:
        return redis.get(key)
    return _limiter().hit(identity, also_get=key)


def settle() -> None:
    """Count a submit that did not read the cache (or refuse it), before it goes further."""
    identity = g.pop("ferry_rate_pending", None)
    if identity is not None:
        _limiter().hit(identity)


def _defer() -> bool:
    """Whether this request certainly reaches the submit view's cache read or `settle`: a
    submit with a key that may submit, to a model that exists. Anything refused earlier (401,
    403, 404) is counted here, before it is refused, as before."""
    if request.endpoint != SUBMIT or request.method != "POST":
        return False
    api_key = current_key()
    if api_key is None or PREDICT not in api_key.scopes:
        return False
    from app.services import services

    try:
        services().registry.get((request.view_args or {}).get("name"))
    except UnknownModel:
        return False
    return True


def init_app(app, settings, redis_client) -> RateLimiter:
    limiter = RateLimiter(redis_client, settings.key_prefix, settings.rate_limit)
    app.extensions["ferry_ratelimit"] = limiter

    @app.before_request
    def limit():
        if (request.endpoint or "").split(".")[0] in UNLIMITED or MISSED_BENEATH in request.environ:
            return
        identity = rate_key()
        if _defer():
            g.ferry_rate_pending = identity
        else:
            limiter.hit(identity)

    @app.after_request
    def counted(response):
        # A deferred submit that was answered without reaching its count still spends budget.
        identity = g.pop("ferry_rate_pending", None)
        if identity is not None:
            try:
                limiter.hit(identity)
            except RateLimited:
                pass
        return response

    @app.errorhandler(RateLimited)
    def too_many_requests(exc: RateLimited):
        retry_after = max(1, math.ceil(exc.retry_after_s))
        caller = "this API key" if current_key() is not None else "this address (no valid API key)"
        body = error_body(exc, f"Too many requests from {caller}: the limit is {exc.limit}. "
                               f"Retry after {retry_after} s.")
        return jsonify(body), 429, {"Retry-After": str(retry_after)}

    return limiter
