"""Checks a worker makes before it takes work, so a broken model repository fails at start."""
from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
import threading

from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from models.remote import resolve_command

log = logging.getLogger(__name__)


def missing_entrypoints(registry) -> list[str]:
    """Declared models whose module or program cannot be found (found without importing it, so
    neither torch nor CUDA is touched before the pool forks)."""
    missing = []
    for spec in registry.specs():
        if spec.kind == "subprocess":
            program = resolve_command(spec.command, registry.root)[0]
            if shutil.which(program) is None:
                missing.append(f"{spec.name} (program {spec.command[0]!r} not found)")
            continue
        if spec.kind != "torch":
            continue
        module = spec.entrypoint.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(f"{spec.name} ({spec.entrypoint})")
    return missing


def outlast_visibility(registry, visibility_timeout_s: float) -> list[str]:
    """Models whose hard time limit or longest retry wait reaches the visibility timeout:
    the broker would re-deliver their messages while they still run or wait."""
    return [f"{spec.name} (hard limit {spec.hard_timeout_s:g} s, longest retry wait {spec.retry_backoff_max_s:g} s)"
            for spec in registry.specs()
            if max(spec.hard_timeout_s, spec.retry_backoff_max_s) >= visibility_timeout_s]


def _stop(message: str) -> None:
    """Stop the worker before it takes work. Celery hands an exception raised in a signal
    handler back to the sender, logs it and starts anyway: a SystemExit gets through."""
    log.critical(message)
    raise SystemExit(f"ferry worker: {message}")


@worker_init.connect
def _check_repository(**kwargs) -> None:
    from tasks.context import current

    ctx = current()
    missing = missing_entrypoints(ctx.registry)
    if missing:
        _stop("Model classes not importable: " + ", ".join(missing)
              + ". Hint: the module must be on the worker's Python path (PYTHONPATH, or installed).")
    too_long = outlast_visibility(ctx.registry, ctx.settings.visibility_timeout_s)
    if too_long:
        log.warning("These models outlast FERRY_VISIBILITY_TIMEOUT_S=%s: %s. Their messages may be delivered "
                    "twice (harmless, but wasted work). Hint: raise the timeout above the longest hard limit.",
                    ctx.settings.visibility_timeout_s, ", ".join(too_long))


def refuse_cuda_before_fork(modules=sys.modules) -> None:
    """A parent that initialised CUDA would fork children that cannot use it; stop loudly
    instead. Only looks: importing torch here would defeat the purpose."""
    torch = modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        _stop("CUDA was initialised in the worker's parent process, before its pool forked. "
              "Hint: touch torch only in Model.setup and Model.predict, never at import time.")


@worker_init.connect
def _check_cuda(**kwargs) -> None:
    refuse_cuda_before_fork()


@worker_process_init.connect
def _import_torch_early(**kwargs) -> None:
    """Start importing torch as soon as a pool process exists (after the fork, so CUDA stays
    untouched in the parent), instead of inside the first task, whose soft time limit a slow
    import on a busy machine can overrun and leave half-imported. A thread, so the process
    reports ready to its parent at once; models still load on first use."""
    from tasks.context import current

    if any(spec.kind == "torch" for spec in current().registry.file_specs):
        threading.Thread(target=importlib.import_module, args=("models.torch_runtime",),
                         name="ferry-import-torch", daemon=True).start()


@worker_process_shutdown.connect
def _close_models(**kwargs) -> None:
    """Subprocess models are children of the pool process: stop them with it."""
    from tasks.context import current

    current().pool.close()
