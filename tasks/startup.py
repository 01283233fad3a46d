"""Checks a worker makes before it takes work, so a broken model repository fails at start."""
from __future__ import annotations

import importlib.util

from celery.signals import worker_init


def missing_entrypoints(registry) -> list[str]:
    """Declared models whose module cannot be found (found without importing it, so
    neither torch nor CUDA is touched before the pool forks)."""
    missing = []
    for spec in registry.specs():
        module = spec.entrypoint.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(f"{spec.name} ({spec.entrypoint})")
    return missing


@worker_init.connect
def _check_repository(**kwargs) -> None:
    from tasks.context import current

    missing = missing_entrypoints(current().registry)
    if missing:
        raise RuntimeError("Model classes not importable: " + ", ".join(missing)
                           + ". Hint: the module must be on the worker's Python path.")
