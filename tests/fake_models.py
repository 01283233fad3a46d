"""Small models for tests: real `Model` subclasses that need no weights."""
from __future__ import annotations

import time

from models.base import Model, TransientError


class Echo(Model):
    def setup(self, device: str) -> None:
        self.device = device

    def predict(self, batch: list[dict]) -> list[dict]:
        return [{"echo": item["x"], "device": self.device} for item in batch]


class Broken(Model):
    def predict(self, batch: list[dict]) -> list[dict]:
        raise RuntimeError("weights are corrupt")


class WrongLength(Model):
    def predict(self, batch: list[dict]) -> list[dict]:
        return []


class Slow(Model):
    def predict(self, batch: list[dict]) -> list[dict]:
        time.sleep(batch[0]["x"])
        return [{"slept": item["x"]} for item in batch]


def declaration(name: str, entrypoint: str, **extra) -> dict:
    model = {"name": name, "kind": "torch", "version": "1", "entrypoint": f"tests.fake_models:{entrypoint}",
             "inputs": {"x": {"type": "number", "required": True}}}
    model.update(extra)
    return model


class Picky(Model):
    """Fails any batch holding a negative x, and each negative x alone."""

    def predict(self, batch: list[dict]) -> list[dict]:
        if any(item["x"] < 0 for item in batch):
            raise ValueError("x must not be negative")
        return [{"double": item["x"] * 2} for item in batch]


class SlowEach(Model):
    """Sleeps `seconds` per input: batch jobs slow enough to interrupt."""

    seconds = 0.02

    def predict(self, batch: list[dict]) -> list[dict]:
        time.sleep(self.seconds * len(batch))
        return [{"double": item["x"] * 2} for item in batch]


class NotJson(Model):
    """Returns what JSON cannot carry: a NaN, or an object."""

    def predict(self, batch: list[dict]) -> list[dict]:
        return [{"score": float("nan") if item["x"] > 0 else object()} for item in batch]


class Probe(Model):
    """Says where and how it ran: process, device, whether torch ran in inference mode,
    and the dtype of a matrix product (float16 under half precision on a GPU)."""

    def setup(self, device: str) -> None:
        self.device = device

    def predict(self, batch: list[dict]) -> list[dict]:
        import os

        import torch

        product = torch.ones(2, 2, device=self.device) @ torch.ones(2, 2, device=self.device)
        return [{"pid": os.getpid(), "device": self.device, "inference_mode": torch.is_inference_mode_enabled(),
                 "dtype": str(product.dtype), "x": item["x"]} for item in batch]


class SlowSetup(Model):
    """Takes 3 s to set up: longer than its declared timeout_s."""

    def setup(self, device: str) -> None:
        time.sleep(3)

    def predict(self, batch: list[dict]) -> list[dict]:
        return [{"x": item["x"]} for item in batch]


class Flaky(Model):
    """Fails transiently `x` times for each input (counted in this process), then succeeds."""

    def setup(self, device: str) -> None:
        self.failures: dict[float, int] = {}

    def predict(self, batch: list[dict]) -> list[dict]:
        for item in batch:
            seen = self.failures.get(item["x"], 0)
            if seen < item["x"]:
                self.failures[item["x"]] = seen + 1
                raise TransientError("upstream is busy")
        return [{"tries": item["x"] + 1} for item in batch]


class Stubborn(Model):
    """Sleeps `x` seconds and swallows the soft time limit: only the hard limit stops it."""

    def predict(self, batch: list[dict]) -> list[dict]:
        deadline = time.monotonic() + batch[0]["x"]
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except BaseException:  # noqa: B036  (what a badly written model does)
                pass
        return [{"slept": item["x"]} for item in batch]


class Patient(Model):
    """Works `x` seconds in small steps, checking between them whether it was canceled."""

    def predict(self, batch: list[dict]) -> list[dict]:
        deadline = time.monotonic() + batch[0]["x"]
        while time.monotonic() < deadline:
            self.check_canceled()
            time.sleep(0.02)
        return [{"worked": item["x"]} for item in batch]


class Weighty(Model):
    """Says which process runs it and claims `megabytes` of memory, for the pool's budget."""

    megabytes = 100

    def predict(self, batch: list[dict]) -> list[dict]:
        import os

        return [{"pid": os.getpid(), "x": item["x"]} for item in batch]

    def memory_bytes(self) -> int:
        return self.megabytes * 2**20

    def close(self) -> None:
        CLOSED.append(self.name)


# Names of the Weighty models the pool closed, in order (unit tests read it).
CLOSED: list[str] = []


class Halfway(Model):
    """Reports half its progress, is canceled meanwhile (as a DELETE arriving mid-run would),
    then reaches its cancellation point."""

    cancel = staticmethod(lambda: None)  # set by the test: cancels the running prediction

    def predict(self, batch: list[dict]) -> list[dict]:
        for index in range(len(batch)):
            self.report_progress(index, 0.5, {"so_far": 1})
        self.cancel()
        time.sleep(0.3)  # the cancel check reads Redis at most every 0.25 s
        self.check_canceled()
        return [{"done": True} for _ in batch]


class FailingSetup(Model):
    """Its setup fails: its weights are missing. Counts its tries in SETUP_TRIES."""

    def setup(self, device: str) -> None:
        SETUP_TRIES.append(device)
        raise FileNotFoundError("weights.pt not found")

    def predict(self, batch: list[dict]) -> list[dict]:
        return batch


SETUP_TRIES: list[str] = []
