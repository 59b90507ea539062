"""Image decoding shared by training and inference.

Training and serving must see identical pixels, so both go through `decode_rgb`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# The one preprocessing scheme bundles may declare. The model receives uint8-range RGB
# and rescales inside itself, so nothing else (mean/std, channel order) lives outside it.
PREPROCESSING_ID = "rgb-uint8-bilinear"

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can read (or are a decompression bomb)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """The image in RGB. 16-bit and float greyscale is stretched from its own minimum to
    its maximum first: a direct RGB conversion of those modes clips instead of scaling."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0.0
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def decode_rgb(data: bytes, *, size: int) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes to a `(size, size, 3)` uint8 RGB array.

    The image is resized (bilinear, aspect ratio not kept) to `size` x `size`. For JPEG,
    `Image.draft` first lets libjpeg decode at a reduced scale, which halves the cost of
    large photographs (see docs/performance.md). Multi-frame files use their first frame.
    Raises `ImageDecodeError` for anything Pillow cannot read.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
            rgb = to_rgb(img)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            out = np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise ImageDecodeError(f"could not decode image: {exc}") from exc
    # np.asarray on a Pillow image can be read-only; callers may write into batches.
    return np.array(out, dtype=np.uint8, copy=True).reshape(size, size, 3)
