"""Request ids: from the header or made up, echoed, stored with the prediction, logged."""
from __future__ import annotations

import json
import logging

import pytest

from app import create_app
from models.declaration import parse_repository
from models.registry import Registry
from tasks import logs
from tasks.context import WorkerContext
from tasks.predict import run_prediction
from tasks.settings import Settings
from tests.auth import keyed_client
from tests.fake_models import declaration

PIXELS = [0.0] * 64


def test_request_id_is_echoed_or_made_up(client):
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made_up = client.get("/health").headers["X-Request-ID"]
    assert len(made_up) == 32 and made_up != client.get("/health").headers["X-Request-ID"]
    forged = client.get("/health", headers={"X-Request-ID": "x level=ERROR \"" + "y" * 200}).headers["X-Request-ID"]
    assert len(forged) == 32 and "level" not in forged
    assert client.get("/models/nope", headers={"X-Request-ID": "r-404"}).headers["X-Request-ID"] == "r-404"


def test_json_logs_of_a_submit_carry_both_ids_and_the_record_keeps_the_request_id(fake_redis, sender, capsys):
    app = create_app({"TESTING": True, "redis_url": "redis://unused:1/0", "log_format": "json"},
                     redis_client=fake_redis, sender=sender)
    client = keyed_client(app)
    capsys.readouterr()
    response = client.post("/models/digits/predictions", json={"input": {"pixels": PIXELS}},
                           headers={"X-Request-ID": "trace-1"})
    prediction_id = response.json["id"]
    assert fake_redis.hget(f"ferry:prediction:{prediction_id}", "request_id") == "trace-1"
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    queued = [line for line in lines if line["message"].startswith("prediction queued")]
    assert queued and queued[0]["request_id"] == "trace-1" and queued[0]["prediction_id"] == prediction_id
    assert {"time", "level", "logger"} <= set(queued[0])
    assert logs.request_id.get() == "" and logs.prediction_id.get() == ""  # nothing leaks past the request


def test_worker_log_lines_name_the_prediction_and_its_request(fake_redis, caplog):
    specs = parse_repository({"models": [declaration("echo", "Echo"), declaration("broken", "Broken")]})
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))
    ids = {}
    for model in ("echo", "broken"):
        ids[model] = ctx.store.create(model=model, version="1", queue="q", validated_input={"x": 1.0},
                                      cache_key=f"k-{model}", request_id=f"req-{model}")["id"]
    with caplog.at_level(logging.INFO, logger="tasks.predict"):
        for model in ("echo", "broken"):
            run_prediction(ids[model], ctx)
    outcomes = {(r.prediction_id, r.request_id, r.levelname) for r in caplog.records if r.name == "tasks.predict"}
    assert (ids["echo"], "req-echo", "INFO") in outcomes
    assert (ids["broken"], "req-broken", "WARNING") in outcomes


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="FERRY_LOG_FORMAT"):
        logs.formatter("xml")
