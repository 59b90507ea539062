"""Turning logits into probabilities a reviewer can trust: temperature or vector scaling.

Both are fitted on the selection split (never the split the card reports) by
minimising the negative log-likelihood of the true class:

- **temperature**: one number T, probabilities `softmax(z / T)`; never changes which
  class is on top;
- **vector scaling** (Guo et al. 2017): a scale and an offset per class,
  `softmax(z * w + b)`; 2K numbers, which can correct a network that is over-confident
  in one class and under-confident in another (three BUSI classes), with a small L2
  pull towards the identity so that a few hundred images cannot over-fit it.

- **auto**: whichever of the two has the lower negative log-likelihood on held-out folds
  of the selection split (5-fold cross-validation, stratified, seeded), then refitted on
  the whole selection split; both cross-validated figures are recorded.

The bundle manifest's `calibration` field says which was fitted; without it the
manifest's temperature applies (bundles made before vector scaling existed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .metrics import FloatArray, softmax

CALIBRATIONS = ("temperature", "vector", "auto")
CV_FOLDS = 5
VECTOR_L2 = 1e-2


class CalibrationError(ValueError):
    """A calibration section is malformed."""


def fit_vector_scaling(y_true: ArrayLike, logits: ArrayLike, *, l2: float = VECTOR_L2) -> dict[str, Any]:
    """Per-class scale w and offset b minimising mean NLL(softmax(z * w + b)) +
    l2 * (|w - 1|^2 + |b|^2) by L-BFGS with the exact gradient."""
    from scipy.optimize import minimize  # type: ignore[import-untyped]

    y = np.asarray(y_true, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    n, k = z.shape
    onehot = np.eye(k)[y]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k:]
        s = z * w + b
        s = s - s.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        value = -np.mean(np.sum(onehot * logp, axis=1)) + l2 * (np.sum((w - 1.0) ** 2) + np.sum(b**2))
        ds = (p - onehot) / n
        grad = np.concatenate([np.sum(ds * z, axis=0) + 2 * l2 * (w - 1.0), np.sum(ds, axis=0) + 2 * l2 * b])
        return float(value), grad

    result = minimize(loss, np.concatenate([np.ones(k), np.zeros(k)]), jac=True, method="L-BFGS-B")
    w, b = result.x[:k], result.x[k:]
    return {"method": "vector", "scale": [float(v) for v in w], "bias": [float(v) for v in b], "l2": l2}


def _fold_ids(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.zeros(len(y), np.int64)
    for k in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == k))
        ids[rows] = np.arange(len(rows)) % folds
    return ids


def choose_calibration(y_true: ArrayLike, logits: ArrayLike, *, seed: int = 0) -> tuple[str, dict[str, float]]:
    """ "temperature" or "vector", by mean held-out NLL over stratified folds of the
    selection split; returns the choice and both cross-validated NLLs."""
    from .metrics import fit_temperature, nll

    y = np.asarray(y_true, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    ids = _fold_ids(y, CV_FOLDS, seed)
    losses: dict[str, list[float]] = {"temperature": [], "vector": []}
    for fold in range(CV_FOLDS):
        held, kept = ids == fold, ids != fold
        if not held.any() or len(np.unique(y[kept])) < z.shape[1]:
            continue
        t = fit_temperature(y[kept], z[kept])
        losses["temperature"].append(nll(y[held], softmax(z[held], t)))
        vector = fit_vector_scaling(y[kept], z[kept])
        losses["vector"].append(nll(y[held], probabilities(z[held], temperature=1.0, calibration=vector)))
    if not losses["temperature"]:
        return "temperature", {}
    cv = {name: float(np.mean(v)) for name, v in losses.items()}
    return ("vector" if cv["vector"] < cv["temperature"] else "temperature"), cv


def validate(section: Any, n_classes: int) -> dict[str, Any]:
    """The manifest's `calibration` field, checked: {} (temperature), or a vector
    scaling with one positive finite scale and one finite offset per class."""
    if not section:
        return {}
    if not isinstance(section, dict):
        raise CalibrationError("manifest 'calibration' must be an object")
    method = section.get("method")
    if method == "temperature":
        return dict(section)
    if method != "vector":
        known = ", ".join(CALIBRATIONS)
        raise CalibrationError(f"manifest 'calibration' method '{method}' is unknown (known: {known})")
    for key in ("scale", "bias"):
        values = section.get(key)
        if (
            not isinstance(values, list)
            or len(values) != n_classes
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values)
        ):
            raise CalibrationError(f"manifest 'calibration' {key} must list {n_classes} finite numbers, one per label")
    if min(section["scale"]) <= 0:
        raise CalibrationError("manifest 'calibration' scales must be greater than zero")
    return dict(section)


def probabilities(logits: ArrayLike, *, temperature: float, calibration: dict[str, Any] | None = None) -> FloatArray:
    """Calibrated class probabilities (N, K) from logits (N, K)."""
    if calibration and calibration.get("method") == "vector":
        z = np.asarray(logits, dtype=np.float64)
        return softmax(z * np.asarray(calibration["scale"]) + np.asarray(calibration["bias"]))
    return softmax(logits, temperature)


def describe(calibration: dict[str, Any] | None, temperature: float) -> str:
    if calibration and calibration.get("method") == "vector":
        w = ", ".join(f"{v:.3f}" for v in calibration["scale"])
        b = ", ".join(f"{v:+.3f}" for v in calibration["bias"])
        text = f"vector scaling: softmax(z * w + b), w = ({w}), b = ({b})"
    else:
        text = f"temperature scaling: softmax(z / T), T = {temperature:.4f}"
    chosen = (calibration or {}).get("chosen_by")
    if chosen:
        text += (
            f" (chosen by the {chosen['rule']}: temperature {chosen['temperature']:.4f}, vector {chosen['vector']:.4f})"
        )
    return text
