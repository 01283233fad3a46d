"""Devices and the queues that route work to them, decided without torch, so that a
worker's parent process never touches CUDA before its pool forks.

    realtime-cpu       CPU workers
    realtime-gpu       every GPU worker: a model declared here runs on whichever GPU is free
    realtime-cuda-{N}  the worker on GPU N only: a model pinned to one GPU
    realtime-sweeps    every real-time worker: the sweeper, which re-sends the predictions
                       of a worker that died (a queue of its own, so that it never waits
                       behind queued predictions, and runs where only GPU workers do)
"""
from __future__ import annotations

import re

from tasks.celery_app import BATCH_QUEUE

CPU_QUEUE = "realtime-cpu"
GPU_QUEUE = "realtime-gpu"
SWEEP_QUEUE = "realtime-sweeps"
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def is_device_queue(queue: str) -> bool:
    """realtime-cpu, realtime-gpu or realtime-cuda-N."""
    return queue in (CPU_QUEUE, GPU_QUEUE) or re.fullmatch(r"realtime-cuda-\d+", queue) is not None


def normalise(device: str) -> str:
    """`cpu`, `auto` or `cuda:N` (`cuda` alone is `cuda:0`); anything else is refused."""
    device = device.strip().lower()
    if not _DEVICE.match(device):
        raise ValueError(f"Unknown device {device!r}. Hint: use cpu, cuda:N (N the GPU's index) or auto.")
    return "cuda:0" if device == "cuda" else device


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def device_queues(device: str) -> list[str]:
    """The real-time queues a worker on `device` consumes by default."""
    device = normalise(device)
    if is_cuda(device):
        return [GPU_QUEUE, f"realtime-cuda-{device.partition(':')[2]}"]
    if device == "auto":
        raise ValueError("Resolve `auto` to cpu or cuda:N before choosing queues.")
    return [CPU_QUEUE]


def with_sweeps(queues: str) -> str:
    """A worker's comma-separated queues, with the sweeper's when it serves real time."""
    names = [name for name in queues.split(",") if name]
    # Batch workers take no part in real time.
    if SWEEP_QUEUE in names or all(name == BATCH_QUEUE for name in names):
        return ",".join(names)
    return ",".join([*names, SWEEP_QUEUE])
