"""Any accepted stored format to 8-bit RGB, for the model and for the browser.
No Django imports, so workers and benchmarks can use it alone.

PNG, JPEG and TIFF go through `ml.preprocess.decode_rgb`, the very function the
model was trained with; DICOM is first rendered to RGB (rescale, window) by
diagnostics/dicom.py and then resized the same way.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from diagnostics.intake import dicom
from diagnostics.ml.preprocess import decode_rgb, to_rgb


def to_rgb_image(data: bytes, *, max_side: int | None = None) -> Image.Image:
    """The image (first frame) as RGB, shrunk to fit ``max_side`` when given."""
    if dicom.sniff(data):
        rendered = dicom.decode_rgb_image(data)
    else:
        with Image.open(io.BytesIO(data)) as img:
            if max_side is not None:
                img.draft("RGB", (max_side, max_side))
            rendered = to_rgb(img)
    if max_side is not None:
        rendered.thumbnail((max_side, max_side))
    return rendered


def decode_for_model(data: bytes, *, size: int) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 array, as the model's preprocessing expects."""
    if not dicom.sniff(data):
        return decode_rgb(data, size=size)
    rgb = dicom.decode_rgb_image(data)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8, copy=True).reshape(size, size, 3)
