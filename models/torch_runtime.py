"""Torch on the worker: the device a model runs on and the context of a forward pass.

Only worker processes import this, after the pool has forked: a parent that had
initialised CUDA would hand its children a CUDA context they cannot use.
"""
from __future__ import annotations

import contextlib

import torch


def resolve_device(requested: str) -> str:
    """`auto` picks the first GPU when there is one; a CUDA device must exist, and becomes
    this process's current device, so that nothing lands on GPU 0 by accident."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"Device {requested} was asked for, but CUDA is not available to this process "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). "
                "Hint: start this worker with --device cpu, or install a CUDA build of torch."
            )
        index = torch.device(requested).index or 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"Device {requested} was asked for, but this machine has "
                               f"{torch.cuda.device_count()} GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
        torch.cuda.set_device(index)
    return requested


def on_device(device: str):
    """`device` as the current CUDA device of the calling thread (each thread has its own),
    for a model's setup on a thread of its own."""
    return torch.cuda.device(device) if device.startswith("cuda") else contextlib.nullcontext()


def limit_threads(threads: int) -> None:
    """At most `threads` CPU threads for this process's forward passes (0: torch's default)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def inference_context(device: str, half_precision: bool = False) -> contextlib.ExitStack:
    """No autograd bookkeeping; with `half_precision` on a CUDA device, float16 autocast
    (which keeps the numerically touchy operations, softmax and norms, in float32)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if half_precision and device.startswith("cuda"):
        stack.enter_context(torch.autocast("cuda", dtype=torch.float16))
    return stack
