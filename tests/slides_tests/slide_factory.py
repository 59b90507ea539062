"""Tiny whole-slide files for tests, written with tifffile (tests only): a generic tiled
pyramid, an Aperio SVS with label and macro images, and the broken ones of the issue's
bad-input list. The shared slides (../shared/data/slides) are used read-only where a
real H&E slide matters."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from diagnostics.intake import tiffdir

ROOT = Path(__file__).resolve().parents[2]
SHARED_SLIDES = next(
    (p for p in (ROOT.parent / "shared" / "data" / "slides", Path("/work/shared/data/slides")) if p.is_dir()),
    Path("/work/shared/data/slides"),
)
LABEL_RGB = (255, 0, 255)  # a colour no tissue or glass has: found in a served pixel = the label leaked


def _texture(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((h, w, 3), 240, np.uint8)
    base[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (200, 120, 170)  # a block of "tissue"
    return np.clip(base.astype(int) + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)


def generic_tiff(path: Path, *, size: tuple[int, int] = (1024, 768), mpp: float | None = 0.5, levels: int = 3) -> Path:
    """A pyramidal tiled TIFF (what OpenSlide calls generic-tiff), uncompressed."""
    w, h = size
    image = _texture(w, h)
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tw:
        for level in range(levels):
            ds = 2**level
            arr = np.asarray(Image.fromarray(image).resize((max(1, w // ds), max(1, h // ds))))
            tw.write(arr, tile=(256, 256), photometric="rgb", metadata=None, subfiletype=1 if level else 0, **res)
    return path


def aperio_svs(
    path: Path, *, size: tuple[int, int] = (1024, 768), mpp: float = 0.5, image: np.ndarray | None = None
) -> Path:
    """An Aperio SVS with a thumbnail, a label and a macro image (magenta, so any leak
    shows). Its tissue is a synthetic texture, or ``image`` (e.g. composed PCam patches)."""
    if image is None:
        w, h = size
        image = _texture(w, h, seed=1)
    h, w = image.shape[:2]
    head = "Aperio Image Library v12.0.15"
    label = np.zeros((120, 160, 3), np.uint8)
    label[:] = LABEL_RGB
    macro = np.zeros((100, 300, 3), np.uint8)
    macro[:] = LABEL_RGB
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(256, 256), photometric="rgb", metadata=None,
                 description=f"{head}\r\n{w}x{h} [0,0 {w}x{h}] (256x256) RAW|AppMag = 20|MPP = {mpp}")  # fmt: skip
        thumb = np.asarray(Image.fromarray(image).resize((w // 8, h // 8)))
        tw.write(thumb, photometric="rgb", metadata=None, description=f"{head}\r\n{w}x{h} -> {w // 8}x{h // 8} - ")
        half = np.asarray(Image.fromarray(image).resize((w // 4, h // 4)))
        level = f"{w}x{h} [0,0 {w}x{h}] -> {w // 4}x{h // 4} RAW|AppMag = 20|MPP = {mpp}"
        tw.write(half, tile=(256, 256), photometric="rgb", metadata=None, description=f"{head}\r\n{level}")
        tw.write(label, photometric="rgb", metadata=None, description=f"{head}\r\nlabel 160x120", subfiletype=1)
        tw.write(macro, photometric="rgb", metadata=None, description=f"{head}\r\nmacro 300x100", subfiletype=9)
    return path


def _set_tag(path: Path, page_index: int, tag: int, value: int) -> None:
    with open(path, "r+b") as fh:
        tiff = tiffdir.TiffFile(fh, path.stat().st_size)
        entry = tiff.pages()[page_index].entries[tag]
        fmt = {3: "H", 4: "I", 16: "Q"}[entry.type]
        fh.seek(entry.value_at)
        fh.write(struct.pack(tiff.e + fmt, value))


def truncated(path: Path) -> Path:
    data = generic_tiff(path).read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def not_tiled(path: Path) -> Path:
    out = io.BytesIO()
    Image.fromarray(_texture(512, 384)).save(out, format="TIFF")
    path.write_bytes(out.getvalue())
    return path


def lying_levels(path: Path) -> Path:
    """Level 1 says it is three times wider than the tiles it holds."""
    generic_tiff(path)
    _set_tag(path, 1, tiffdir.IMAGE_WIDTH, 512 * 3)
    return path


def huge(path: Path) -> Path:
    """A slide declaring 10^6 x 10^6 pixels."""
    generic_tiff(path)
    _set_tag(path, 0, tiffdir.IMAGE_WIDTH, 1_000_000)
    _set_tag(path, 0, tiffdir.IMAGE_LENGTH, 1_000_000)
    return path


def mrxs_index(path: Path) -> Path:
    path.write_text("[GENERAL]\nSLIDE_VERSION = 01.02\nSLIDE_ID = x\n")
    return path


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray(_texture(64, 64)).save(out, format="PNG")
    return out.getvalue()


def cells_from(folder: Path, count: int, *, cell: int = 96, offset: int = 0) -> list[np.ndarray]:
    """``count`` images of a class folder (sorted, from ``offset``), each centre-cropped
    square and resized to one ``cell`` of a composed slide."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[offset:]
    cells = []
    for path in paths[:count]:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            side = min(rgb.size)
            left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
            square = rgb.crop((left, top, left + side, top + side)).resize((cell, cell), Image.Resampling.BILINEAR)
            cells.append(np.asarray(square))
    if len(cells) < count:
        raise ValueError(f"{folder} has {len(cells)} images, {count} wanted")
    return cells


def compose(cells: list[np.ndarray], cols: int) -> np.ndarray:
    """The cells side by side, ``cols`` per row: a slide's level-0 pixels."""
    rows = -(-len(cells) // cols)
    cell = cells[0].shape[0]
    image = np.full((rows * cell, cols * cell, 3), 255, np.uint8)
    for i, c in enumerate(cells):
        r, k = divmod(i, cols)
        image[r * cell : (r + 1) * cell, k * cell : (k + 1) * cell] = c
    return image


def composed_tiff(path: Path, image: np.ndarray, *, mpp: float = 0.972) -> Path:
    """A pyramidal tiled TIFF of ``image`` (level 0 and a half-size level) at ``mpp``."""
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    h, w = image.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(256, 256), photometric="rgb", metadata=None, subfiletype=0, **res)
        half = np.asarray(Image.fromarray(image).resize((max(1, w // 2), max(1, h // 2))))
        tw.write(half, tile=(256, 256), photometric="rgb", metadata=None, subfiletype=1, **res)
    return path


class ArraySlide:
    """An in-memory slide of one level with OpenSlide's reading calls (the slide path's
    `SlideReader`), for tests that need no file."""

    def __init__(self, image: np.ndarray) -> None:
        self._image = Image.fromarray(image).convert("RGBA")

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._image.size

    @property
    def level_count(self) -> int:
        return 1

    @property
    def level_downsamples(self) -> list[float]:
        return [1.0]

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [self._image.size]

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        x, y = location
        return self._image.crop((x, y, x + size[0], y + size[1]))
