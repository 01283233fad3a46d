"""The cache-hit baseline: a bare Flask endpoint that does one Redis GET and returns it."""
from __future__ import annotations

import os

from flask import Flask, Response

from tasks.context import redis_client
from tasks.settings import Settings

# The key the bench fills before it starts the load.
KEY = "ferry:bench:bare"


def create_app() -> Flask:
    app = Flask(__name__)
    redis = redis_client(Settings.from_env())
    key = os.environ.get("FERRY_BENCH_KEY", KEY)

    @app.post("/get")
    def get():
        return Response(redis.get(key), mimetype="application/json")

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app
