"""GPU worker mode on a real worker: the parent never loads torch, the command line
`ferry worker --device cuda:0` consumes its device's queues, and a model declared on the
GPU queue is routed to it. On a machine without CUDA the prediction fails, saying why."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from app import create_app
from tasks.heartbeat import live_queues
from tests.auth import keyed_client
from tests.fake_models import declaration
from tests.processes import BIN, ROOT, ferry_env, stop_group, wait_for

pytestmark = pytest.mark.integration


def mapped_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_models_run_in_a_child_and_the_parent_never_loads_torch(live_client, worker):
    response = live_client.post("/models/probe/predictions", json={"input": {"x": 1}}, headers={"Prefer": "wait=60"})
    assert response.status_code == 200, response.json
    output = response.json["output"]
    assert output["inference_mode"] is True and output["device"] == "cpu"
    assert output["pid"] != worker.pid
    assert mapped_torch(output["pid"]), "the child that ran the model has torch loaded"
    assert not mapped_torch(worker.pid), "the worker's parent process loaded torch before forking"


def test_a_gpu_worker_takes_the_models_declared_on_the_gpu_queue(redis_url, real_redis, tmp_path, data_dir):
    repository = tmp_path / "repository.yaml"
    repository.write_text(yaml.safe_dump({"models": [
        declaration("probe-gpu", "Probe", queue="realtime-gpu", half_precision=True)]}))
    settings = {"redis_url": redis_url, "model_repository": repository, "data_dir": data_dir}
    log = (tmp_path / "gpu-worker.log").open("ab")
    # PYTHONPATH: the worker's children import the probe from tests/, which is not installed.
    env = {**ferry_env(**settings), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([str(BIN / "ferry"), "worker", "--device", "cuda:0"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: {"realtime-gpu", "realtime-cuda-0"} <= live_queues(real_redis, "ferry:", 10), 90,
                 "GPU worker", proc)
        client = keyed_client(create_app({"TESTING": True, **{k: str(v) for k, v in settings.items()}}))
        response = client.post("/models/probe-gpu/predictions", json={"input": {"x": 2}},
                               headers={"Prefer": "wait=60"})
        assert response.status_code == 200, response.json
        body = response.json
        if torch.cuda.is_available():
            assert body["status"] == "succeeded", body
            assert body["output"]["device"] == "cuda:0" and body["output"]["dtype"] == "torch.float16"
        else:
            assert body["status"] == "failed"
            assert "cuda:0 was asked for, but CUDA is not available" in body["error"]
    finally:
        stop_group(proc)


def test_a_pool_process_imports_torch_before_its_first_task(redis_url, real_redis, tmp_path, repository_file,
                                                            data_dir):
    """So that a slow import never runs under a task's soft time limit; the parent stays clean."""
    from tests.integration.conftest import run_worker

    proc = run_worker(redis_url, real_redis, tmp_path, "idle-queue", model_repository=repository_file,
                      data_dir=data_dir)
    try:
        children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert children, "a prefork worker has pool processes"
        wait_for(lambda: all(mapped_torch(pid) for pid in children), 120, "torch imported in the pool processes")
        assert not mapped_torch(proc.pid)
    finally:
        stop_group(proc)
