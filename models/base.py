"""The model interface: a model author writes `setup` and `predict`; the rest has defaults."""
from __future__ import annotations


class Model:
    """Base class for in-worker models.

    `setup(device)` runs once per worker process, on first use, and loads weights.
    `predict(batch)` always receives a list of validated inputs (dicts, defaults applied)
    and must return a list of JSON-serialisable dicts of the same length.
    """

    name: str = ""
    version: str = ""

    def setup(self, device: str) -> None:
        """Load weights onto `device` ("cpu", "cuda:0", ...)."""

    def predict(self, batch: list[dict]) -> list[dict]:
        raise NotImplementedError(
            f"{type(self).__name__}.predict is missing. "
            "Hint: implement predict(self, batch: list[dict]) -> list[dict]."
        )
