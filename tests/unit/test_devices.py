"""GPU worker mode, checked on the CPU: devices, their queues, the worker's command line,
and that nothing touches torch (let alone CUDA) in a worker's parent before it forks."""
import json
import os
import subprocess
import sys
import types

import click
import pytest
import torch

from app.cli import worker_command
from models.declaration import parse_repository
from models.registry import Registry
from models.torch_runtime import inference_context, resolve_device
from tasks import devices
from tasks.context import WorkerContext
from tasks.predict import run_prediction
from tasks.settings import ROOT, Settings
from tasks.startup import refuse_cuda_before_fork
from tests.fake_models import declaration


def test_devices_and_their_queues():
    assert devices.normalise(" CUDA ") == "cuda:0"
    assert devices.device_queues("cpu") == ["realtime-cpu"]
    assert devices.device_queues("cuda:1") == ["realtime-gpu", "realtime-cuda-1"]
    for bad in ("gpu", "cuda:x", "cuda:0,1", ""):
        with pytest.raises(ValueError, match="Unknown device"):
            devices.normalise(bad)


def test_a_gpu_worker_is_one_prefork_process_on_its_device_queues():
    argv, env = worker_command(Settings(worker_concurrency=4), device="cuda:1")
    assert env == {"FERRY_DEVICE": "cuda:1", "FERRY_TORCH_THREADS": str(os.cpu_count() or 1)}
    assert argv[argv.index("--queues") + 1] == "realtime-gpu,realtime-cuda-1,realtime-sweeps"
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert argv[argv.index("--pool") + 1] == "prefork"
    assert "ferry-cuda-1-" in argv[argv.index("--hostname") + 1]
    with pytest.raises(click.UsageError, match="one worker per GPU"):
        worker_command(Settings(), concurrency=2, device="cuda:0")


def test_a_cpu_worker_keeps_its_concurrency_and_explicit_queues_win():
    argv, env = worker_command(Settings(worker_concurrency=3))
    assert env["FERRY_DEVICE"] == "cpu"
    assert argv[argv.index("--queues") + 1] == "realtime-cpu,realtime-sweeps"
    assert argv[argv.index("--concurrency") + 1] == "3"
    argv, _ = worker_command(Settings(), queues="batch", device="cuda:0")
    assert argv[argv.index("--queues") + 1] == "batch"
    with pytest.raises(click.BadParameter):
        worker_command(Settings(), device="tpu")


def test_a_workers_processes_share_the_cores_among_their_torch_threads(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    threads = lambda **kw: worker_command(Settings(**kw))[1]["FERRY_TORCH_THREADS"]  # noqa: E731
    assert threads(worker_concurrency=2) == "4"
    assert threads(worker_concurrency=3) == "2"
    assert threads(worker_concurrency=16) == "1"
    assert threads(worker_concurrency=2, torch_threads=6) == "6"  # set by the operator


def test_the_pool_limits_torch_threads_where_it_loads_a_torch_model(monkeypatch):
    from models import torch_runtime
    from models.registry import Registry
    from tasks.pool import ModelPool

    limited = []
    monkeypatch.setattr(torch_runtime, "limit_threads", limited.append)
    pool = ModelPool("cpu", torch_threads=3)
    pool.get(Registry.from_file(Settings().model_repository).get("textstats"))  # a subprocess model
    assert limited == []
    pool.get(Registry.from_file(Settings().model_repository).get("pi"))
    assert limited == [3]
    pool.close()


def test_every_real_time_worker_runs_the_sweeper_and_batch_workers_do_not():
    """The sweeper re-sends a dead worker's predictions: a deployment of GPU workers alone
    runs it too, and it never waits behind queued predictions."""
    assert devices.with_sweeps("realtime-cuda-0") == "realtime-cuda-0,realtime-sweeps"
    assert devices.with_sweeps("realtime-cpu,realtime-sweeps") == "realtime-cpu,realtime-sweeps"
    assert devices.with_sweeps("batch") == "batch"
    assert devices.with_sweeps("batch,custom") == "batch,custom,realtime-sweeps"
    from batch_jobs.schedule import beat_schedule

    assert beat_schedule(Settings())["prediction-sweeper"]["options"]["queue"] == devices.SWEEP_QUEUE


def test_the_worker_command_line_is_accepted_by_celery():
    argv, env = worker_command(Settings(), device="cuda:0")
    result = subprocess.run([sys.executable, "-m", "celery", *argv[1:], "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_worker_parent_imports_no_torch():
    # What `celery -A tasks.worker worker` imports in the parent, before the pool forks.
    code = "import sys, tasks.worker; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_a_parent_with_cuda_initialised_refuses_to_fork():
    def fake_torch(initialised):
        return types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: initialised))

    refuse_cuda_before_fork({})
    refuse_cuda_before_fork({"torch": fake_torch(False)})
    with pytest.raises(SystemExit, match="before its pool forked"):  # Celery would let any Exception pass
        refuse_cuda_before_fork({"torch": fake_torch(True)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_a_gpu_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == "cpu"


def test_half_precision_is_ignored_on_the_cpu():
    with inference_context("cpu", half_precision=True):
        assert torch.is_inference_mode_enabled()
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert not torch.is_inference_mode_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_half_precision_on_a_gpu_computes_in_float16():
    with inference_context("cuda:0", half_precision=True):
        assert (torch.ones(2, 2, device="cuda:0") @ torch.ones(2, 2, device="cuda:0")).dtype == torch.float16


def test_predictions_run_in_inference_mode(fake_redis):
    specs = parse_repository({"models": [declaration("probe", "Probe", half_precision=True)]})
    ctx = WorkerContext.build(Settings(redis_url="redis://unused:1/0"), fake_redis, Registry(specs))
    record = ctx.store.create(model="probe", version="1", queue="realtime-cpu", validated_input={"x": 1.0},
                              cache_key=ctx.cache.key("probe", "1", {"x": 1.0}))
    assert run_prediction(record["id"], ctx) == "succeeded"
    output = json.loads(ctx.store.get(record["id"])["output"])
    assert output["inference_mode"] is True and output["device"] == "cpu" and output["dtype"] == "torch.float32"
