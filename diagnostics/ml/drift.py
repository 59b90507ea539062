"""Drift measures between a reference and a recent window, numpy and scipy only.

Population stability index (PSI) between two histograms of proportions:
sum((cur - ref) * ln(cur / ref)), with empty bins floored at a small epsilon. Rule of
thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a significant shift. The confidence
distribution is compared with a two-sample Kolmogorov-Smirnov test instead: it is a
continuous value and the test gives a p-value."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import ks_2samp  # type: ignore[import-untyped]

COLOUR_BINS = 16
# Image size: bins of log2(pixels) from 2**10 (32 x 32) to 2**26 (about 8k x 8k).
SIZE_EDGES = [float(e) for e in range(10, 27, 2)]
EPSILON = 1e-4


def colour_histograms(rgb: np.ndarray) -> np.ndarray:
    """(3, COLOUR_BINS) pixel counts per channel of an (H, W, 3) uint8 image."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError("expected an (H, W, 3) image")
    return np.stack(
        [
            np.bincount((arr[..., c].astype(np.int64).ravel() * COLOUR_BINS) // 256, minlength=COLOUR_BINS)
            for c in range(3)
        ]
    ).astype(np.float64)


def proportions(counts: ArrayLike) -> list[float]:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return [float(x) for x in (c / total if total > 0 else c)]


def size_histogram(sizes: Sequence[tuple[int, int]]) -> list[float]:
    """Proportions of images per log2(pixel count) bin (outside bins clipped to the ends)."""
    logs = np.log2(np.maximum(1, np.array([w * h for w, h in sizes], dtype=np.float64)))
    idx = np.clip(np.digitize(logs, SIZE_EDGES), 0, len(SIZE_EDGES))
    return proportions(np.bincount(idx, minlength=len(SIZE_EDGES) + 1))


def psi(reference: ArrayLike, current: ArrayLike) -> float:
    ref = np.maximum(np.asarray(reference, dtype=np.float64), EPSILON)
    cur = np.maximum(np.asarray(current, dtype=np.float64), EPSILON)
    if ref.shape != cur.shape:
        raise ValueError("both histograms need the same bins")
    ref, cur = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def ks_p_value(reference: ArrayLike, current: ArrayLike) -> tuple[float, float]:
    """(KS statistic, p-value) of two samples."""
    result = ks_2samp(np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64))
    return float(result.statistic), float(result.pvalue)


def reference_stats(images: np.ndarray, probabilities: ArrayLike, labels: Sequence[str]) -> dict[str, object]:
    """A drift reference in the form the periodic check compares with: colour
    proportions per channel, the predicted-stage mix and the confidences. ``images``
    are the (N, S, S, 3) uint8 arrays the model saw; their original sizes are not known
    here, so the reference has no size histogram (the check then skips that measure)."""
    imgs = np.asarray(images)
    probs = np.asarray(probabilities, dtype=np.float64)
    if imgs.ndim != 4 or imgs.shape[0] == 0 or probs.shape != (imgs.shape[0], len(labels)):
        raise ValueError("need one probability row per image and one column per label")
    colour = sum((colour_histograms(img) for img in imgs), np.zeros((3, COLOUR_BINS)))
    predicted = probs.argmax(axis=1)
    return {
        "colour": [proportions(row) for row in colour],
        "decoded": int(imgs.shape[0]),
        "size": None,
        "stages": proportions(np.bincount(predicted, minlength=len(labels))),
        "confidences": [float(c) for c in probs.max(axis=1)],
    }
