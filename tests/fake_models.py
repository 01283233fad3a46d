"""Small models for tests: real `Model` subclasses that need no weights."""
from __future__ import annotations

import time

from models.base import Model


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
