"""API keys for tests: every client the fixtures hand out sends a valid key by default."""
from __future__ import annotations

import time

from app.keys import SCOPES

# The fixtures' apps lift the per-key rate limit out of the way of tests that send many
# requests; tests/unit/test_ratelimit.py sets its own.
TEST_RATE_LIMIT = "100000/second"


def clear_of_a_minute_edge(needed_s: float = 3.0) -> None:
    """Wait, if need be, until the current minute has `needed_s` left. Past a window's edge
    the sliding window counts only part of the previous window's hits, so a test counting to
    a small per-minute limit across an edge would see one more request allowed. Redis (real
    or fake) reads this machine's clock."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.05)


def authorize(client, token: str):
    """Make `client` (Flask's test client) send `token` on every request."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def keyed_client(app, scopes=SCOPES, name: str = "tests"):
    """A test client of `app` with a new key holding `scopes`, stored in the app's Redis.
    `client.api_key.id` is the owner to give records a test writes into the store itself."""
    token, api_key = app.extensions["ferry"].keys.create(name, scopes)
    client = authorize(app.test_client(), token)
    client.api_key = api_key
    return client
