from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from diagnostics.ml.preprocess import ImageDecodeError, decode_rgb

from .conftest import PCAM, encode


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_decodes_common_formats_to_uint8_rgb(photo: np.ndarray, fmt: str) -> None:
    out = decode_rgb(encode(photo, fmt), size=32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.uint8


def test_large_jpeg_uses_draft_and_still_gives_requested_size() -> None:
    big = np.full((1536, 2048, 3), 120, dtype=np.uint8)
    out = decode_rgb(encode(big, "JPEG"), size=224)
    assert out.shape == (224, 224, 3)
    assert abs(int(out.mean()) - 120) <= 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    if mode == "I;16":
        img = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
        fmt = "TIFF"
    else:
        img = Image.new("RGB", (64, 64), (10, 200, 30)).convert(mode)
        fmt = "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out = decode_rgb(buf.getvalue(), size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    if mode == "I;16":  # scaled to the full 8-bit range, not clipped to white
        assert int(out.max()) - int(out.min()) > 200


def test_same_size_image_is_pixel_exact() -> None:
    path = sorted((PCAM / "valid" / "metastasis").iterdir())[0]
    expected = np.asarray(Image.open(path).convert("RGB"))
    out = decode_rgb(path.read_bytes(), size=96)
    assert np.array_equal(out, expected)
    out[0, 0, 0] = 1  # writable


def test_garbage_bytes_raise_a_clear_error() -> None:
    with pytest.raises(ImageDecodeError, match="could not decode image"):
        decode_rgb(b"not an image at all", size=32)
    assert issubclass(ImageDecodeError, ValueError)


def test_size_must_be_positive(photo: np.ndarray) -> None:
    with pytest.raises(ValueError):
        decode_rgb(encode(photo, "PNG"), size=0)
