"""Helpers shared by the test suites: inputs built from the digits model's held-out split."""
from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image

from models.builtin.train_digits import split_digits


@lru_cache(maxsize=1)
def test_split() -> tuple[np.ndarray, np.ndarray]:
    """(X_test, y_test) of the split the shipped digits metrics were measured on."""
    _, X_test, _, y_test = split_digits()
    return X_test, y_test


# Test modules import this by name; without the flag pytest would collect it as a test.
test_split.__test__ = False


def digit_image(
    index: int,
    size: tuple[int, int] = (64, 64),
    invert: bool = False,
    resample: Image.Resampling = Image.Resampling.NEAREST,
) -> tuple[Image.Image, int]:
    """The index-th held-out digit upscaled to `size` (width, height), and its label.

    Dark ink on white by default, light ink on black with `invert`.
    """
    X_test, y_test = test_split()
    ink = X_test[index].reshape(8, 8) * (255 / 16)
    gray = ink if invert else 255 - ink
    image = Image.fromarray(np.round(gray).astype(np.uint8)).resize(size, resample)
    return image, int(y_test[index])


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def digit_png_base64(
    index: int,
    size: tuple[int, int] = (64, 64),
    invert: bool = False,
    resample: Image.Resampling = Image.Resampling.NEAREST,
) -> tuple[str, int]:
    """Base64 PNG of the index-th held-out digit (see digit_image), and its label."""
    image, label = digit_image(index, size, invert, resample)
    return png_base64(image), label
