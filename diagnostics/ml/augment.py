"""Training-batch augmentation and the test-time views.

- `augment_batch`: random geometric (dihedral or left-right) and colour changes of a
  float training batch in 0..255, keyed by a stateless seed so a run is reproducible.
  The colour change is either a hue/saturation jitter ("hsv") or a perturbation of the
  haematoxylin, eosin and DAB stain amounts ("hed", Tellez et al. 2018): stain colour
  varies between labs far more than hue does, and the HED jitter moves an image along
  exactly those directions.
- `views` / `unviews`: the transforms test-time averaging runs an image through (none,
  left-right flip, or all eight rotations and reflections) and their inverses for maps
  on the same grid; written against a NumPy-like module (numpy, jax.numpy, or
  TensorFlow's `experimental.numpy`) so the runner uses them inside either backend's
  compiled call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

AUGMENTATIONS = ("dihedral", "horizontal")
COLOUR_AUGMENTATIONS = ("hsv", "hed", "none")
TTA_MODES = ("none", "flip-lr", "dihedral8")

# Stain vectors of haematoxylin, eosin and DAB in optical density (Ruifrok and Johnston
# 2001), as scikit-image's `rgb2hed` uses them; rows are stains, columns R, G, B.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# Optical density is scaled by -log(1e-6) as in scikit-image, so stain amounts of
# tissue lie in about 0..1 and a sigma of 0.05 means what it means in the literature.
_OD_FLOOR = 1e-6
_OD_SCALE = -math.log(_OD_FLOOR)


def _tf() -> Any:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def hed_jitter(images: Any, seed: Any, sigma: float) -> Any:
    """Scale each image's haematoxylin, eosin and DAB amounts by U(1 - sigma, 1 + sigma)
    and shift them by U(-sigma, sigma); images and result are float in 0..255."""
    tf = _tf()
    batch = tf.shape(images)[0]
    seeds = tf.random.split(seed, num=2)
    rgb = tf.maximum(images / 255.0, _OD_FLOOR)
    stains = tf.tensordot(-tf.math.log(rgb) / _OD_SCALE, tf.constant(HED_FROM_RGB, tf.float32), axes=1)
    alpha = tf.random.stateless_uniform([batch, 1, 1, 3], seeds[0], 1.0 - sigma, 1.0 + sigma)
    beta = tf.random.stateless_uniform([batch, 1, 1, 3], seeds[1], -sigma, sigma)
    od = tf.tensordot(stains * alpha + beta, tf.constant(RGB_FROM_HED, tf.float32), axes=1)
    return tf.clip_by_value(tf.exp(-od * _OD_SCALE) * 255.0, 0.0, 255.0)


def _hsv_jitter(x: Any, seed: Any) -> Any:
    tf = _tf()
    batch = tf.shape(x)[0]
    colour = tf.random.stateless_uniform([batch, 2], seed, -1.0, 1.0)
    hsv = tf.image.rgb_to_hsv(x / 255.0)
    hue = tf.math.floormod(hsv[..., 0] + (colour[:, 0] * 0.04)[:, None, None], 1.0)
    sat = tf.clip_by_value(hsv[..., 1] * (1.0 + colour[:, 1] * 0.25)[:, None, None], 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1)) * 255.0


def augment_batch(
    images: Any, seed: Any, mode: str = "dihedral", *, colour: str = "hsv", stain_sigma: float = 0.05
) -> Any:
    """Random flips (all dihedral transforms, or left-right only for images with an up),
    zoom-in up to 10 %, brightness/contrast jitter and a colour change ("hsv": hue
    +-0.04, saturation +-25 %; "hed": stain amounts, see `hed_jitter`; "none") on a
    float batch in 0..255. Images must be square."""
    tf = _tf()
    seeds = tf.random.split(seed, num=7)
    batch = tf.shape(images)[0]
    size = images.shape[1]

    def maybe(x: Any, fn: Any, s: Any) -> Any:
        mask = tf.random.stateless_uniform([batch, 1, 1, 1], s) < 0.5
        return tf.where(mask, fn(x), x)

    if mode == "dihedral":
        # Transpose and the two flips generate all eight rotations/reflections.
        x = maybe(images, lambda t: tf.transpose(t, [0, 2, 1, 3]), seeds[0])
        x = maybe(x, lambda t: tf.reverse(t, [2]), seeds[1])
        x = maybe(x, lambda t: tf.reverse(t, [1]), seeds[2])
    else:
        x = maybe(images, lambda t: tf.reverse(t, [2]), seeds[1])
    scale = tf.random.stateless_uniform([batch], seeds[3], 0.9, 1.0)
    offset = tf.random.stateless_uniform([batch, 2], seeds[4]) * (1.0 - scale)[:, None]
    boxes = tf.stack([offset[:, 0], offset[:, 1], offset[:, 0] + scale, offset[:, 1] + scale], axis=1)
    x = tf.image.crop_and_resize(x, boxes, tf.range(batch), [size, size])
    jitter = tf.random.stateless_uniform([batch, 2], seeds[5], -1.0, 1.0)
    brightness = (jitter[:, 0] * 0.1 * 255.0)[:, None, None, None]
    contrast = (1.0 + jitter[:, 1] * 0.15)[:, None, None, None]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = tf.clip_by_value((x - mean) * contrast + mean + brightness, 0.0, 255.0)
    if colour == "hsv":
        x = _hsv_jitter(x, seeds[6])
    elif colour == "hed":
        x = hed_jitter(x, seeds[6], stain_sigma)
    return tf.clip_by_value(x, 0.0, 255.0)


def describe(mode: str, colour: str, stain_sigma: float) -> str:
    geometry = "random flips and 90-degree rotations" if mode == "dihedral" else "random left-right flips"
    tone = {
        "hsv": ", hue +-0.04, saturation +-25 %",
        "hed": f", stain amounts (haematoxylin, eosin, DAB) x U(1 +- {stain_sigma:g}) + U(+- {stain_sigma:g})",
        "none": "",
    }[colour]
    return f"{geometry}, zoom-in up to 10 %, brightness +-10 %, contrast +-15 %{tone} (training batches only)"


# ---------------------------------------------------------------------------- test-time views


def view_count(mode: str) -> int:
    return {"none": 1, "flip-lr": 2, "dihedral8": 8}[mode]


def _ops(ops: Any) -> Any:
    return getattr(getattr(ops, "experimental", None), "numpy", ops)


def views(ops: Any, x: Any, mode: str) -> list[Any]:
    """The test-time views of a batch (N, H, W, ...) with square H = W: the identity
    first, then for "flip-lr" the left-right mirror, for "dihedral8" the rotations by
    90, 180 and 270 degrees and the same four of the transposed batch."""
    np_ops = _ops(ops)
    if mode == "none":
        return [x]
    if mode == "flip-lr":
        return [x, np_ops.flip(x, axis=2)]
    t = np_ops.swapaxes(x, 1, 2)
    return [np_ops.rot90(base, k, axes=(1, 2)) for base in (x, t) for k in range(4)]


def unviews(ops: Any, maps: list[Any], mode: str) -> list[Any]:
    """Undo `views` on maps (N, h, w, ...) computed from each view: every map back in
    the original image's orientation."""
    np_ops = _ops(ops)
    if mode == "none":
        return list(maps)
    if mode == "flip-lr":
        return [maps[0], np_ops.flip(maps[1], axis=2)]
    out = []
    for i, m in enumerate(maps):
        back = np_ops.rot90(m, (4 - i % 4) % 4, axes=(1, 2))
        out.append(np_ops.swapaxes(back, 1, 2) if i >= 4 else back)
    return out
