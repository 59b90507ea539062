"""Heat-map images: a Grad-CAM grid in 0..1 to a small colour PNG whose alpha follows
the heat, so the browser can lay it over the scan at any opacity."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# A perceptually ordered ramp (dark blue -> cyan -> yellow -> red); a few anchors
# interpolated linearly are enough for an overlay.
_ANCHORS = np.array(
    [[0, 0, 128], [0, 128, 255], [0, 255, 255], [255, 255, 0], [255, 128, 0], [200, 0, 0]], dtype=np.float32
)


def colorize(cam: np.ndarray) -> np.ndarray:
    """(h, w) values in 0..1 -> (h, w, 4) uint8 RGBA; alpha rises with the heat."""
    v = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    pos = v * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(_ANCHORS) - 1)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1.0 - frac) + _ANCHORS[hi] * frac
    alpha = (np.sqrt(v) * 255.0)[..., None]
    return np.concatenate([rgb, alpha], axis=-1).round().astype(np.uint8)


# The ramp sampled at 256 levels: a palette PNG (mode "P") indexes it, with the alpha
# of each level in the PNG's tRNS chunk. One byte per pixel instead of four, and no
# per-pixel colour arithmetic: about a third of the RGBA encoder's time (bench/).
_PALETTE = colorize(np.linspace(0.0, 1.0, 256, dtype=np.float32))


def heatmap_png(cam: np.ndarray, *, size: int) -> bytes:
    """Upsample the grid smoothly to `size` x `size` and encode it as a palette PNG
    whose colours and alpha follow the ramp above (the browser shows it as RGBA)."""
    grid = np.asarray(cam, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"expected a 2-D heat map, got shape {grid.shape}")
    clean = np.clip(np.nan_to_num(grid), 0.0, 1.0)
    img = Image.fromarray(clean, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    levels = np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out_img = Image.frombytes("P", (size, size), levels.tobytes())
    out_img.putpalette(_PALETTE[:, :3].tobytes())
    out = io.BytesIO()
    out_img.save(out, format="PNG", compress_level=1, transparency=_PALETTE[:, 3].tobytes())
    return out.getvalue()
