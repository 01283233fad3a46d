"""What a worker and beat check when they start: a broken setup stops them with its reason,
and only the process that needs what is broken."""
from __future__ import annotations

import pytest
import yaml

from tests.fake_models import declaration
from tasks.heartbeat import live_queues
from tests.processes import start_beat, start_worker, stop_group, wait_for

pytestmark = pytest.mark.integration


def _exit_code(proc, timeout_s: float = 60) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        stop_group(proc)


def test_a_worker_whose_models_cannot_be_found_stops_at_start(redis_url, tmp_path):
    repository = tmp_path / "repository.yaml"
    ghost = {**declaration("ghost", "Ghost"), "entrypoint": "nowhere.at_all:Ghost"}
    repository.write_text(yaml.safe_dump({"models": [ghost]}))
    log_path = tmp_path / "worker.log"
    returncode = _exit_code(start_worker(redis_url, log_path, queues="ghost-queue", model_repository=repository))
    said = log_path.read_text()
    assert returncode != 0, said
    assert "Model classes not importable: ghost (nowhere.at_all:Ghost)" in said and "Hint:" in said


def test_a_bad_nightly_file_stops_beat_with_its_reason_and_no_worker(redis_url, real_redis, tmp_path):
    nightly = tmp_path / "nightly.yaml"
    nightly.write_text('jobs:\n  - {name: late, model: digits, source: {type: popular}, crontab: "0 2 * *"}\n')
    beat_log = tmp_path / "beat.log"
    returncode = _exit_code(start_beat(redis_url, beat_log, tmp_path, nightly_jobs_file=nightly))
    said = beat_log.read_text()
    assert returncode != 0 and f"{nightly}: nightly job late: crontab '0 2 * *'" in said, said
    worker = start_worker(redis_url, tmp_path / "worker.log", queues="nightly-test", nightly_jobs_file=nightly)
    try:
        wait_for(lambda: "nightly-test" in live_queues(real_redis, "ferry:", 10), 60, "worker", worker)
    finally:
        stop_group(worker)
