"""Decoding of base64 images sent as model input, bounded against oversized or hostile files."""
from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = frozenset({"PNG", "JPEG"})
MAX_PIXELS = 4096 * 4096
# Models look at small images; decoding a large one at full size only costs memory.
WORKING_SIZE = (512, 512)


class ImageError(ValueError):
    """The value is not a usable base64 PNG or JPEG image."""


def _raw_bytes(value: str) -> bytes:
    # Browsers hand out canvas images as data URLs, and `base64` wraps its lines: accept both.
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("Not valid base64.") from exc


def _open_checked(raw: bytes, max_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ImageError(f"The image is too large; at most {max_pixels} pixels are accepted.") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError("Not a readable PNG or JPEG image.") from exc
    if image.format not in ALLOWED_FORMATS:
        raise ImageError(f"Unsupported image format {image.format}; send PNG or JPEG.")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"The image is {width}x{height}; at most {max_pixels} pixels are accepted.")
    return image


def check_image(value: str, max_pixels: int = MAX_PIXELS) -> str:
    """Validate without decoding the pixels (format, size and file integrity only) and return
    the image as plain, unwrapped base64, so that a data URL, wrapped lines and plain base64
    of the same file are one input, with one cache key."""
    raw = _raw_bytes(value)
    image = _open_checked(raw, max_pixels)
    try:
        image.verify()
    except Exception as exc:
        raise ImageError("The image file is damaged or truncated.") from exc
    return base64.b64encode(raw).decode("ascii")


def open_image(value: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a base64 (or data URL) PNG/JPEG, upright and at most WORKING_SIZE."""
    image = _open_checked(_raw_bytes(value), max_pixels)
    try:
        image.draft("L", WORKING_SIZE)  # JPEG decodes at a reduced scale directly
        image = ImageOps.exif_transpose(image)
        image.thumbnail(WORKING_SIZE)
        image.load()
    except (OSError, ValueError) as exc:
        raise ImageError("The image file is damaged or truncated.") from exc
    return image
