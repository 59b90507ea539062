"""Knowing when not to answer: is an input like the images a model was trained on?

Two kinds of check, both carried by the bundle (`ood` in its manifest, the feature
reference in `ood_reference.npz` beside the model file):

- **Image checks**, before any network: an image whose shorter side is under
  `min_side` pixels (the model would see mostly interpolation), or nearly blank (the
  standard deviation of its grey levels, on the model's input, under `min_std`).
- **Feature distance**: the Mahalanobis distance of the network's penultimate features
  (the last feature map averaged over its grid) to the nearest class mean, with one
  covariance shared by the classes and shrunk by Ledoit-Wolf (Lee et al., "A simple
  unified framework for detecting out-of-distribution samples", NeurIPS 2018, without
  the input perturbation). The class means and the shared precision matrix come from
  the training split; the threshold is chosen on held-out images of the model's own
  task (the inliers) against images of other tasks and synthetic non-tissue (the
  outliers), and its rates are reported on a third, disjoint set.

An input that fails either is flagged "outside what this model was trained on"; the
review then shows the warning and no suggested stage. numpy and scikit-learn only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OOD_FILE = "ood_reference.npz"
METHOD = "mahalanobis-tied-ledoit-wolf"
# Own-task held-out images flagged at most this often on the selection split, by each
# of the two distances (features, image statistics).
MAX_INLIER_RATE = 0.015
DEFAULT_MIN_STD = 4.0

REASON_TOO_SMALL = "too_small"
REASON_BLANK = "nearly_blank"
REASON_FEATURES = "unlike_training_data"
REASON_SLIDE_NO_TISSUE = "slide_no_tissue"
REASON_SLIDE_TILES = "slide_tiles_unlike_training_data"
REASON_TEXT = {
    REASON_TOO_SMALL: "the image is too small for this model",
    REASON_BLANK: "the image is nearly blank",
    REASON_FEATURES: "the image is unlike the images this model was trained on",
    REASON_SLIDE_NO_TISSUE: "no tissue was found on the slide",
    REASON_SLIDE_TILES: "most of the slide's tissue is unlike the patches this model was trained on",
}
# A slide is outside what a patch model was trained on when at least this fraction of
# its tissue tiles is, each by the bundle's own per-image rule. The rule flags about
# 3 % of the model's own held-out patches, so a slide of the kind it was trained on sits
# far below one half, and a slide of another kind (every tile unlike) far above it; a
# mixed slide, half unlike, is not one the model's answer should be trusted on.
SLIDE_OUTSIDE_FRACTION = 0.5


class OodError(ValueError):
    """A feature reference is malformed or does not fit the model."""


@dataclass(frozen=True)
class FeatureReference:
    class_means: np.ndarray  # (K, C) float64
    precision: np.ndarray  # (C, C) float64, the inverse of the shared covariance

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, one per row of (N, C)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.class_means.shape[1]:
            raise OodError(f"expected features of shape (N, {self.class_means.shape[1]}), got {f.shape}")
        diffs = f[:, None, :] - self.class_means[None, :, :]  # (N, K, C)
        d2 = ((diffs @ self.precision) * diffs).sum(axis=-1)  # a BLAS product, not an einsum loop
        return np.asarray(d2.min(axis=1))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}class_means": self.class_means, f"{prefix}precision": self.precision}

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> FeatureReference:
        means, precision = np.asarray(data[f"{prefix}class_means"]), np.asarray(data[f"{prefix}precision"])
        if means.ndim != 2 or precision.shape != (means.shape[1], means.shape[1]):
            raise OodError("the reference's class means and precision matrix do not fit together")
        if not (np.isfinite(means).all() and np.isfinite(precision).all()):
            raise OodError("the reference holds values that are not finite")
        return cls(means.astype(np.float64), precision.astype(np.float64))


@dataclass(frozen=True)
class References:
    """What a bundle's `ood_reference.npz` holds: the penultimate features' reference
    (one mean per class) and the image statistics' reference (one mean)."""

    features: FeatureReference
    images: FeatureReference

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        arrays = {**self.features.arrays("features_"), **self.images.arrays("images_")}
        np.savez(out, allow_pickle=False, **arrays)
        return out.getvalue()

    @classmethod
    def from_file(cls, path: str | Path) -> References:
        try:
            with np.load(path, allow_pickle=False) as data:
                features = FeatureReference.from_arrays(data, "features_")
                return cls(features, FeatureReference.from_arrays(data, "images_"))
        except (OSError, KeyError, ValueError) as exc:
            raise OodError(f"cannot read the out-of-distribution reference {Path(path).name}: {exc}") from exc


def fit_reference(features: np.ndarray, labels: np.ndarray, n_classes: int) -> FeatureReference:
    """Class means and the Ledoit-Wolf shrunk covariance of the class-centred features."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(y):
        raise OodError("need one label per feature row")
    means = np.zeros((n_classes, f.shape[1]))
    centred = np.empty_like(f)
    for k in range(n_classes):
        rows = y == k
        if not rows.any():
            raise OodError(f"class {k} has no training features")
        means[k] = f[rows].mean(axis=0)
        centred[rows] = f[rows] - means[k]
    estimator = LedoitWolf(assume_centered=True).fit(centred)
    return FeatureReference(means, np.asarray(estimator.precision_, dtype=np.float64))


def choose_threshold(inlier_scores: np.ndarray, *, max_inlier_rate: float = MAX_INLIER_RATE) -> float:
    """The score above which an input is flagged: the (1 - max_inlier_rate) quantile of
    the held-out own-task scores, so at most that share of them is flagged."""
    scores = np.asarray(inlier_scores, dtype=np.float64)
    if scores.size == 0:
        raise OodError("no held-out scores to choose a threshold on")
    return float(np.quantile(scores, 1.0 - max_inlier_rate))


def image_statistics(images: np.ndarray) -> np.ndarray:
    """(N, 9) colour and texture statistics of (N, S, S, 3) uint8 images: each channel's
    mean and standard deviation, the mean and spread of the chroma (max - min channel:
    0 for a grey ultrasound, high for H&E stain) and the mean grey-level gradient."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise OodError(f"expected images of shape (N, S, S, 3), got {arr.shape}")
    # Channel planes, not reductions over the 3-long last axis (several times slower).
    r, g, b = (arr[..., c].astype(np.float32) * np.float32(1 / 255) for c in range(3))
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    grey = (r + g + b) * np.float32(1 / 3)
    gradient = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
    planes = (r, g, b)
    return np.concatenate(
        [
            np.stack([p.mean(axis=(1, 2)) for p in planes], axis=1),
            np.stack([p.std(axis=(1, 2)) for p in planes], axis=1),
            chroma.mean(axis=(1, 2))[:, None],
            chroma.std(axis=(1, 2))[:, None],
            gradient[:, None],
        ],
        axis=1,
    ).astype(np.float64)


def grey_std(image: np.ndarray) -> float:
    """Standard deviation of the grey levels of an (H, W, 3) uint8 image."""
    arr = np.asarray(image)
    return float(((arr[..., 0].astype(np.float32) + arr[..., 1] + arr[..., 2]) / 3).std())


def reasons(
    *,
    width: int,
    height: int,
    image: np.ndarray,
    feature_score: float | None,
    image_score: float | None,
    section: dict[str, Any],
) -> list[str]:
    """Why an input is outside what the model was trained on (empty: it is not), from
    its original size, its decoded input and its two distances, by the limits of the
    bundle's `ood` manifest section."""
    out = []
    if min(width, height) < int(section.get("min_side", 0)):
        out.append(REASON_TOO_SMALL)
    if grey_std(image) < float(section.get("min_std", DEFAULT_MIN_STD)):
        out.append(REASON_BLANK)
    far_features = feature_score is not None and feature_score > float(section["threshold"])
    far_image = image_score is not None and image_score > float(section["image_threshold"])
    if far_features or far_image:
        out.append(REASON_FEATURES)
    return out


def slide_reasons(*, tissue_tiles: int, outside_tiles: int | None) -> list[str]:
    """Why a slide is outside what its patch model was trained on (empty: it is not),
    from its count of tissue tiles and of those the per-image rule flags (None: the
    bundle carries no reference, so only the absence of tissue can be told)."""
    if tissue_tiles == 0:
        return [REASON_SLIDE_NO_TISSUE]
    if outside_tiles is not None and outside_tiles >= SLIDE_OUTSIDE_FRACTION * tissue_tiles:
        return [REASON_SLIDE_TILES]
    return []


def flag_rate(scores: np.ndarray, threshold: float) -> float:
    s = np.asarray(scores, dtype=np.float64)
    return float((s > threshold).mean()) if s.size else 0.0


def synthetic_outliers(count: int, size: int, seed: int) -> np.ndarray:
    """Images no clinical model was trained on: flat colours, colour ramps, noise and
    text-like stripes, seeded; part of the outliers a threshold is judged against."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        kind = i % 4
        base = rng.uniform(0, 255, size=3).astype(np.float32)
        if kind == 0:
            img = np.broadcast_to(base, (size, size, 3)) + rng.normal(0, 2, (size, size, 3))
        elif kind == 1:
            img = base * 0.3 + ramp[None, :, None] * rng.uniform(0.2, 0.7) + ramp[:, None, None] * 0.2
        elif kind == 2:
            img = rng.uniform(0, 255, (size, size, 3))
        else:
            stripes = (np.arange(size) // rng.integers(2, 8) % 2).astype(np.float32) * 200
            img = np.broadcast_to(stripes[:, None, None], (size, size, 3)) + base * 0.2
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images
