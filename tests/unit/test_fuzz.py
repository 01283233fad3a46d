"""Fuzzing: schemathesis makes requests from /openapi.json, valid and invalid, and checks
every answer against the document: no 5xx, only documented status codes, content types,
headers and bodies, schema-valid requests accepted, invalid ones rejected.

In process through the WSGI app (fakeredis, recorded task sends), with an API key that
has both scopes, a bounded number of examples per operation and a fixed seed, so that a
run is quick and repeatable. The figures are printed at the end of the run. A deeper,
random run by hand: `FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/unit/test_fuzz.py`.
"""
from __future__ import annotations

import collections
import json
import os
import tempfile
import time

import fakeredis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from app.keys import SCOPES
from tasks.senders import RecordingSender
from tests.auth import TEST_RATE_LIMIT

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
EXPLORING = "FUZZ_EXAMPLES" in os.environ

# Built at import: schemathesis' loading from a fixture fails under pytest 9 (it reads a
# private attribute pytest no longer has).
redis = fakeredis.FakeRedis(decode_responses=True)
_DATA_DIR = tempfile.TemporaryDirectory(prefix="ferry-fuzz-")
app = create_app(
    # `Prefer: wait` would hold every submit for its full wait: nothing finishes here.
    # An event stream stays open until its prediction is done: likewise.
    {"TESTING": True, "redis_url": "redis://unused:1/0", "rate_limit": TEST_RATE_LIMIT, "max_wait_s": 0.01,
     "event_stream_max_s": 0.05, "event_heartbeat_s": 0.02,
     "data_dir": _DATA_DIR.name},
    redis_client=redis, sender=RecordingSender())
TOKEN, _ = app.extensions["ferry"].keys.create("fuzz", SCOPES)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Workflows follow the document's own links only, not links guessed from field names.
schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=SchemathesisConfig.from_dict(
    {"phases": {"stateful": {"inference": {"algorithms": []}}}}))
STATUSES: collections.Counter = collections.Counter()


def _a_live_worker_for_every_queue():
    # As in a healthy deployment; readiness without a worker (503) is tested in test_api.py.
    queues = sorted(app.extensions["ferry"].registry.queues)
    redis.hset("ferry:workers", "fuzz", json.dumps({"queues": queues, "last_seen": time.time() + 3600}))


def _acceptance_unknowable(case) -> bool:
    """Schema-valid requests that the document cannot promise to accept (422 for each): a batch
    source file that does not exist; any input on the generic submit operation, whose input
    depends on the model named (each model's own operation is checked in full); a model
    declaration, whose fields depend on each other (a kind's own fields, the hard time limit
    above the soft one) in ways JSON Schema does not say; an image that is base64 text but
    no PNG or JPEG."""
    if case.method != "POST":
        return False
    if case.path in ("/batch-jobs", "/models/{name}/predictions", "/models"):
        return True
    body = case.body if isinstance(case.body, dict) else {}
    return isinstance(body.get("input"), dict) and "image" in body["input"]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=not EXPLORING, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_api_keeps_to_its_openapi_document(case):
    _a_live_worker_for_every_queue()
    excluded = [positive_data_acceptance] if _acceptance_unknowable(case) else []
    try:
        response = case.call_and_validate(headers=AUTH, excluded_checks=excluded)
    finally:
        STATUSES["cases"] += 1
    STATUSES[response.status_code] += 1


def summary() -> str | None:
    """The figures, for the end of the test run (tests/conftest.py prints them)."""
    if not STATUSES["cases"]:
        return None
    server_errors = sum(count for status, count in STATUSES.items() if status != "cases" and status >= 500)
    by_status = ", ".join(f"{status}: {count}" for status, count in sorted(
        (item for item in STATUSES.items() if item[0] != "cases"), key=lambda item: item[0]))
    return f"fuzz: {STATUSES['cases']} cases, {server_errors} answered 5xx ({by_status})"


class Workflows(schema.as_state_machine()):
    """Sequences that follow the document's links: submit, then read and follow the prediction."""

    def setup(self):
        _a_live_worker_for_every_queue()

    def get_call_kwargs(self, case):
        return {"headers": AUTH}

    def validate_response(self, response, case, additional_checks=(), **kwargs):
        STATUSES["cases"] += 1
        STATUSES[response.status_code] += 1
        excluded = [positive_data_acceptance] if _acceptance_unknowable(case) else []
        case.validate_response(response, headers=AUTH, excluded_checks=excluded,
                               additional_checks=list(additional_checks))


TestWorkflows = Workflows.TestCase
TestWorkflows.settings = settings(max_examples=MAX_EXAMPLES, stateful_step_count=4, deadline=None,
                                  derandomize=not EXPLORING, database=None, suppress_health_check=list(HealthCheck))
