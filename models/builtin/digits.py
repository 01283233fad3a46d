"""Built-in `digits` model: a small CNN for scikit-learn's 8x8 handwritten digits.

Input per item is either `pixels` (64 values in 0..16, row by row, ink high, exactly like
`sklearn.datasets.load_digits().data`) or `image` (a base64 PNG/JPEG of one digit, any
size, dark-on-light or light-on-dark). Images are reduced to the same 64 values the way
the data set itself was made: the digit's bounding box scaled to fill the frame, then the
ink averaged over an 8x8 grid.

Weights, metrics and training arguments live in artifacts/digits/ and are reproduced by
`python -m models.builtin.train_digits`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from models.base import Model
from models.images import open_image

WEIGHTS = Path(__file__).parent / "artifacts" / "digits" / "weights.safetensors"
MAX_PIXEL = 16.0
N_PIXELS = 64

# Pixels whose ink is below this fraction of the strongest ink are not part of the digit
# when finding its bounding box (anti-aliasing, JPEG noise, faint smudges).
INK_THRESHOLD = 0.2
# Empty border kept around the cropped digit, as a fraction of its longer side. The data
# set's digits touch the top and bottom rows, so none is kept.
CROP_MARGIN = 0.0


class DigitsNet(torch.nn.Module):
    """Three 3x3 convolutions, two poolings (8x8 -> 2x2), one linear layer to 10 classes."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Dropout(0.25),
            torch.nn.Linear(64 * 2 * 2, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def to_tensor(pixels) -> torch.Tensor:
    """Rows of 64 values in 0..16 -> float tensor (N, 1, 8, 8) in 0..1."""
    array = np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 8, 8)
    return torch.from_numpy(array / MAX_PIXEL)


def _ink(image: Image.Image) -> np.ndarray:
    """Float array in 0..1 where 1 is the strongest ink, whatever the colours or polarity."""
    if image.mode.startswith(("I", "F")):
        # 16-bit greyscale PNGs would be clipped to 255 by convert(); the ink is relative
        # to the background anyway, so raw values serve.
        gray = np.asarray(image, dtype=np.float32)
    else:
        gray = _gray(image)
    # The data set's digits almost never cover the border (median border ink <= 0.5/16),
    # so the border's median is the background; ink is the distance from it. This handles
    # dark-on-light, light-on-dark and grey backgrounds alike.
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    ink = np.abs(gray - np.median(border))
    peak = ink.max()
    return ink / peak if peak > 0 else ink


def _gray(image: Image.Image) -> np.ndarray:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if alpha.min() < 1.0:
        # Canvas drawings often have strokes on a transparent background. Composite onto
        # the colour opposite to the strokes so that transparency reads as background
        # whether the strokes are black or white.
        weight = alpha.sum()
        stroke = (rgb * alpha[..., None]).sum() / (3 * weight) if weight > 0 else 0.0
        backdrop = 1.0 if stroke < 0.5 else 0.0
        rgb = rgb * alpha[..., None] + backdrop * (1.0 - alpha[..., None])
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _crop_to_digit(ink: np.ndarray, margin: float) -> np.ndarray:
    """Cut the ink's bounding box out and centre it in a square, like the data set did."""
    rows = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=0))
    if rows.size == 0:
        return ink
    box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = box.shape
    side = max(height, width)
    pad = int(round(side * margin))
    square = np.zeros((side + 2 * pad, side + 2 * pad), dtype=np.float32)
    top = pad + (side - height) // 2
    left = pad + (side - width) // 2
    square[top : top + height, left : left + width] = box
    return square


def pixels_from_image(image: Image.Image, crop: bool = True, margin: float = CROP_MARGIN) -> list[float]:
    """Reduce an image of one digit to 64 values in 0..16 laid out like load_digits.

    `crop=False` keeps the whole frame, which is only right for an image that is exactly
    an upscaled 8x8 sample.
    """
    ink = _ink(image)
    if crop:
        ink = _crop_to_digit(ink, margin)
    # Box filtering averages the ink in each of the 8x8 cells, the grey-level analogue of
    # the data set's count of set bits in each 4x4 block of a 32x32 bitmap.
    small = Image.fromarray(ink.astype(np.float32)).resize((8, 8), Image.Resampling.BOX)
    pixels = np.clip(np.asarray(small, dtype=np.float32) * MAX_PIXEL, 0.0, MAX_PIXEL)
    return pixels.reshape(-1).tolist()


def _pixels_of(item: dict, position: int) -> list[float]:
    if "pixels" in item and item["pixels"] is not None:
        pixels = item["pixels"]
        if len(pixels) != N_PIXELS:
            raise ValueError(f"Item {position}: 'pixels' must hold {N_PIXELS} values, got {len(pixels)}.")
        return pixels
    if "image" in item and item["image"] is not None:
        return pixels_from_image(open_image(item["image"]))
    raise ValueError(
        f"Item {position} has neither 'pixels' nor 'image'. Hint: send 'pixels' "
        f"({N_PIXELS} numbers in 0..16) or 'image' (a base64 PNG or JPEG)."
    )


class DigitsModel(Model):
    name = "digits"
    version = "1"

    def __init__(self, weights: str | Path = WEIGHTS):
        self.weights = Path(weights)
        self.device = "cpu"
        self.net: DigitsNet | None = None

    def setup(self, device: str) -> None:
        net = DigitsNet()
        net.load_state_dict(load_file(str(self.weights), device="cpu"))
        self.net = net.to(device).eval()
        self.device = device

    def predict(self, batch: list[dict]) -> list[dict]:
        if self.net is None:
            raise RuntimeError("DigitsModel.predict called before setup(device).")
        if not batch:
            return []
        rows = [_pixels_of(item, i) for i, item in enumerate(batch)]
        inputs = to_tensor(rows).to(self.device)
        with torch.inference_mode():
            probabilities = torch.softmax(self.net(inputs), dim=1).cpu()
        labels = probabilities.argmax(dim=1).tolist()
        # Round the whole batch at once: per-number round() costs more than the forward pass.
        rounded = probabilities.double().numpy().round(6).tolist()
        return [{"label": label, "probabilities": row} for label, row in zip(labels, rounded)]
