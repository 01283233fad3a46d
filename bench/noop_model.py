"""A model that does nothing, to measure the path around the model."""
from models.base import Model


class Noop(Model):
    def predict(self, batch: list[dict]) -> list[dict]:
        return [{"x": item["x"]} for item in batch]
