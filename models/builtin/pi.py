"""Built-in `pi` model: a long-running example that reports its progress.

It estimates pi by Monte Carlo in `rounds` rounds (points in the unit square that fall
inside the quarter circle) and, after each round, reports how far it has come and the
estimate so far as a partial output. `pause_s` between rounds stands in for a model whose
every step is slow (a diffusion sampler's denoising step, a long generation), so that the
work stays cheap on a CPU while lasting long enough to watch.
"""
from __future__ import annotations

import math
import time

import torch

from models.base import Model


class PiModel(Model):
    def setup(self, device: str) -> None:
        self.device = device

    def predict(self, batch: list[dict]) -> list[dict]:
        return [self._estimate(index, item) for index, item in enumerate(batch)]

    def _estimate(self, index: int, item: dict) -> dict:
        rounds, per_round = item["rounds"], item["points_per_round"]
        generator = torch.Generator(device="cpu").manual_seed(item["seed"])
        inside = 0
        for done in range(1, rounds + 1):
            points = torch.rand(per_round, 2, generator=generator)
            inside += int((points.square().sum(dim=1) <= 1.0).sum())
            estimate = 4.0 * inside / (done * per_round)
            self.report_progress(index, done / rounds, {"estimate": estimate, "points": done * per_round})
            if done < rounds:
                time.sleep(item["pause_s"])
        return {"estimate": estimate, "points": rounds * per_round, "error": abs(estimate - math.pi)}
