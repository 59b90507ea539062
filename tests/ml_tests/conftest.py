"""Fixtures for the framework-free ML tests (no database, no Django)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = REPO / "models" / "demo-pcam"
PCAM = Path("/work/shared/data/pcam")


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_class_folder(folder: Path, n: int, colour: tuple[int, int, int], seed: int, size: int = 32) -> None:
    """`n` noisy PNGs around one colour, so two classes are easy to tell apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        noise = rng.integers(-40, 40, size=(size, size, 3))
        arr = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
        (folder / f"img{i:03d}.png").write_bytes(encode(arr, "PNG"))


@pytest.fixture
def synthetic_data(tmp_path: Path) -> Path:
    """Two classes x 12 images of 32 px, with dataset.json giving a non-alphabetical order."""
    root = tmp_path / "data"
    write_class_folder(root / "benign", 12, (200, 80, 80), seed=1)
    write_class_folder(root / "adverse", 12, (80, 80, 200), seed=2)
    (root / "dataset.json").write_text(json.dumps({"name": "toy", "labels": ["benign", "adverse"]}))
    return root
