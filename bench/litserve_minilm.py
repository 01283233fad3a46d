"""LitServe serving Ferry's `minilm` model code, the peer in bench/realtime.py.

    .venv-bench/bin/python -m bench.litserve_minilm PORT MAX_BATCH_SIZE MAX_WAIT_MS

The same model class, device and batch settings as Ferry's worker; LitServe's defaults
otherwise (one inference worker, as many API servers as workers). POST /predict takes
Ferry's body, `{"input": {"text": ...}}`, and answers the model's output.
"""
from __future__ import annotations

import sys

import litserve as ls

from models.builtin.minilm import MiniLMModel


class MiniLMAPI(ls.LitAPI):
    def setup(self, device):
        self.model = MiniLMModel()
        self.model.setup(device)

    def decode_request(self, request):
        return {"normalize": True, **request["input"]}

    def predict(self, batch):
        # Unbatched (max_batch_size 1), LitServe hands over one input.
        return self.model.predict(batch) if isinstance(batch, list) else self.model.predict([batch])[0]

    def encode_response(self, output):
        return output


def main() -> None:
    port, max_batch_size, max_wait_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    api = MiniLMAPI(max_batch_size=max_batch_size, batch_timeout=max_wait_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
