"""At-least-once delivery against real processes: a worker killed with SIGKILL mid-batch,
and a redis-server that crashes and comes back from its append-only file.

This module has its own redis-server (append-only, `appendfsync always`), its own beat
(the sweeper) and its own workers, with short leases so that recovery takes seconds.
"""
from __future__ import annotations

import json
import os
import signal
from collections import Counter
from types import SimpleNamespace

import pytest
import redis
import yaml

from tests.fake_models import declaration
from tests.auth import keyed_client
from tests.integration.conftest import build_live_app
from tests.processes import RedisServer, start_beat, start_worker, stop_group, wait_for

pytestmark = pytest.mark.integration

IN_FLIGHT = 200
# A lease of 3 s renewed every second, a sweep every second, unacknowledged messages back
# after 6 s: recovery in seconds instead of the production defaults' tens of seconds.
FAST_RECOVERY = {"claim_lease_s": 3, "sweep_s": 1, "visibility_timeout_s": 6}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("delivery")
    repository = root / "repository.yaml"
    # A long soft limit: a pool process imports torch on its first batch, which can take
    # a minute on a busy machine, and an import cut short by the limit breaks the process.
    limits = {"timeout_s": 600}
    repository.write_text(yaml.safe_dump({"models": [
        # 20 ms per input, up to 8 inputs a forward pass.
        declaration("steady", "SlowEach", batching={"max_batch_size": 8, "max_wait_ms": 0}, **limits),
        # Sleeps x seconds, one input at a time.
        declaration("sleepy", "Slow", **limits),
    ]}))
    server = RedisServer(root / "redis", appendonly=True).start()
    settings = {"model_repository": repository, "data_dir": root, **FAST_RECOVERY}
    client = redis.Redis.from_url(server.url, decode_responses=True)
    procs = [start_beat(server.url, root / "beat.log", root, **settings)]

    def worker(name: str, concurrency: int = 2):
        log_path = root / f"worker-{name}.log"
        proc = start_worker(server.url, log_path, concurrency=concurrency, **settings)
        procs.append(proc)
        try:
            # Its own heartbeat: one from a worker killed a moment ago may still look fresh.
            wait_for(lambda: any(json.loads(beat)["pid"] == proc.pid for beat in client.hvals("ferry:workers")),
                     60, f"worker {name}", proc)
        except Exception:
            print(log_path.read_text(errors="replace")[-5000:])
            raise
        return proc

    app = build_live_app(server.url, repository, root, **FAST_RECOVERY)
    yield SimpleNamespace(server=server, redis=client, worker=worker, client=keyed_client(app), root=root)
    for proc in procs:
        stop_group(proc)
    client.close()
    server.stop()


def statuses(client: redis.Redis, ids: list[str]) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for prediction_id in ids:
        pipe.hget(f"ferry:prediction:{prediction_id}", "status")
    return pipe.execute()


def submit(client, model: str, xs: list[float]) -> list[str]:
    ids = []
    for x in xs:
        response = client.post(f"/models/{model}/predictions", json={"input": {"x": x}})
        assert response.status_code == 202, response.json
        ids.append(response.json["id"])
    return ids


def wait_all_finished(stack, ids: list[str], timeout_s: float = 300) -> Counter:
    def finished():
        counts = Counter(statuses(stack.redis, ids))
        return counts if counts["queued"] + counts["running"] == 0 else None

    return wait_for(finished, timeout_s, "every prediction finished")


def test_worker_killed_mid_batch_loses_nothing(stack):
    xs = [1000.0 + i for i in range(IN_FLIGHT)]
    ids = submit(stack.client, "steady", xs)

    def busy():
        counts = Counter(statuses(stack.redis, ids))
        return counts["succeeded"] >= 16 and counts["running"] >= 1

    # The kill must land mid-batch; on a loaded machine it can fall between two batches, and
    # then the next worker gets killed instead.
    for attempt in range(3):
        doomed = stack.worker(f"doomed-{attempt}")
        wait_for(busy, 300, "a worker mid-way")
        os.killpg(doomed.pid, signal.SIGKILL)  # the whole worker: main process and pool processes
        doomed.wait(10)
        at_kill = Counter(statuses(stack.redis, ids))
        running = [pid for pid, status in zip(ids, statuses(stack.redis, ids)) if status == "running"]
        if running:
            break
    in_flight = IN_FLIGHT - at_kill["succeeded"]
    assert in_flight > 0 and running, at_kill  # the kill came mid-way, with a batch on the model

    stack.worker("second")
    done = wait_all_finished(stack, ids)
    print(f"\nworker killed with {in_flight} of {IN_FLIGHT} predictions in flight ({at_kill['running']} running, "
          f"{at_kill['queued']} queued); the second worker finished them: {dict(done)}")
    assert done == Counter({"succeeded": IN_FLIGHT}), done
    outputs = [json.loads(stack.redis.hget(f"ferry:prediction:{pid}", "output"))["double"] for pid in ids]
    assert outputs == [2 * x for x in xs]
    # Those the dead worker was running were run again, by the sweeper's re-send.
    assert all(int(stack.redis.hget(f"ferry:prediction:{pid}", "attempts")) >= 2 for pid in running)


def the_worker(stack):
    """The module's live worker (the kill test leaves one running)."""
    if not hasattr(stack, "live"):
        stack.live = stack.worker("live")
    return stack.live


def test_a_batch_longer_than_its_lease_keeps_its_claim(stack):
    the_worker(stack)
    [prediction_id] = submit(stack.client, "sleepy", [4.5])  # 1.5 leases
    assert wait_all_finished(stack, [prediction_id]) == Counter({"succeeded": 1})
    # Renewed while it ran: the sweeper never saw it lapse, so it ran once.
    assert stack.redis.hget(f"ferry:prediction:{prediction_id}", "attempts") == "1"


def test_every_acknowledged_prediction_completes_after_a_redis_crash(stack):
    the_worker(stack)
    xs = [0.2 + i / 1000 for i in range(20)]  # 0.2 s each, one at a time: most still queued at the crash
    ids = submit(stack.client, "sleepy", xs)
    stack.server.crash()

    down = stack.client.post("/models/sleepy/predictions", json={"input": {"x": 0.5}})
    assert down.status_code == 503 and int(down.headers["Retry-After"]) > 0, down.json
    assert stack.client.get(f"/predictions/{ids[0]}").status_code == 503
    ready = stack.client.get("/health/ready")
    assert ready.status_code == 503 and ready.json["checks"]["redis"].startswith("unreachable")

    stack.server.start()  # same port, same append-only file
    at_restart = Counter(statuses(stack.redis, ids))
    done = wait_all_finished(stack, ids)
    print(f"\nredis-server crashed with {len(ids) - at_restart['succeeded']} of {len(ids)} acknowledged predictions "
          f"unfinished ({dict(at_restart)} after restart); afterwards: {dict(done)}")
    assert done == Counter({"succeeded": len(ids)}), done
    outputs = [json.loads(stack.redis.hget(f"ferry:prediction:{pid}", "output"))["slept"] for pid in ids]
    assert outputs == xs
    assert stack.client.get("/health/ready").status_code == 200
