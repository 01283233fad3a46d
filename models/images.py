"""Decoding of base64 images sent as model input, bounded against oversized or hostile files."""
from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = frozenset({"PNG", "JPEG"})
MAX_PIXELS = 4096 * 4096


class ImageError(ValueError):
    """The value is not a usable base64 PNG or JPEG image."""


def _strip_data_url(value: str) -> str:
    # Browsers hand out canvas images as data URLs; accept them as they come.
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    return value


def open_image(value: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a base64 (or data URL) PNG/JPEG into a loaded Pillow image."""
    try:
        raw = base64.b64decode(_strip_data_url(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("Not valid base64.") from exc
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format not in ALLOWED_FORMATS:
            raise ImageError(f"Unsupported image format {image.format}; send PNG or JPEG.")
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"Image is {width}x{height}; at most {max_pixels} pixels are accepted.")
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageError("Not a readable PNG or JPEG image.") from exc
    return image
