"""Classification and calibration metrics, numpy only.

Conventions: `y_true` holds integer class indices, `probs` is an (N, K) array of
probabilities, `logits` an (N, K) array of unnormalised scores. Confusion matrices have
true classes as rows and predicted classes as columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def _labels(y_true: ArrayLike) -> IntArray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError("y_true must be one-dimensional")
    return y.astype(np.int64)


def softmax(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def log_softmax(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    out: FloatArray = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return out


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    y, p = _labels(y_true), _labels(y_pred)
    if y.size == 0:
        raise ValueError("no samples")
    return float(np.mean(y == p))


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> IntArray:
    y, p = _labels(y_true), _labels(y_pred)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def per_class_prf(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> dict[str, FloatArray]:
    """Per-class precision, recall, F1 and support; 0.0 where undefined (no predictions)."""
    return per_class_prf_from_confusion(confusion_matrix(y_true, y_pred, n_classes))


def per_class_table(prf: dict[str, FloatArray], labels: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """`per_class_prf`'s arrays as a JSON-ready table keyed by label."""
    return {
        label: {
            "precision": float(prf["precision"][k]),
            "recall": float(prf["recall"][k]),
            "f1": float(prf["f1"][k]),
            "support": int(prf["support"][k]),
        }
        for k, label in enumerate(labels)
    }


def per_class_prf_from_confusion(confusion: ArrayLike) -> dict[str, FloatArray]:
    """The same from a confusion matrix (rows true, columns predicted), e.g. one counted
    in the database."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95 % by default), or None when n is 0.
    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a
    single point at 0/n or n/n: 2 of 2 agreements give 0.342 to 1, not "1.000"."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> float:
    """Mean recall over the classes present in `y_true`."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        raise ValueError("no samples")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def _average_ranks(x: FloatArray) -> FloatArray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(x.size, dtype=np.float64)
    # Boundaries of runs of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc_binary(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve from the Mann-Whitney rank statistic (ties count half)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both positive and negative samples")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Binary AUC (score = probability of class 1) for two columns; otherwise the
    unweighted mean of one-vs-rest AUCs. Every class must occur in `y_true`."""
    y = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError("probs must be (N, K) with N matching y_true")
    if p.shape[1] == 2:
        return roc_auc_binary(y == 1, p[:, 1])
    return float(np.mean([roc_auc_binary(y == k, p[:, k]) for k in range(p.shape[1])]))


def expected_calibration_error(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 15) -> float:
    """ECE of the top-class confidence over `n_bins` equal-width bins (lo, hi]."""
    y = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.size == 0:
        raise ValueError("no samples")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def nll(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped at 1e-12)."""
    y = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-12, 1.0))))


def nll_from_logits(y_true: ArrayLike, logits: ArrayLike, temperature: float = 1.0) -> float:
    y = _labels(y_true)
    return float(-np.mean(log_softmax(logits, temperature)[np.arange(y.size), y]))


def fit_temperature(
    y_true: ArrayLike,
    logits: ArrayLike,
    *,
    lower: float = 0.05,
    upper: float = 20.0,
    iterations: int = 100,
) -> float:
    """Temperature T minimising the NLL of softmax(logits / T).

    NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over
    log T in [lower, upper] finds the minimum without gradients.
    """
    y = _labels(y_true)
    z = np.asarray(logits, dtype=np.float64)

    def loss(log_t: float) -> float:
        return nll_from_logits(y, z, math.exp(log_t))

    a, b = math.log(lower), math.log(upper)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(math.exp((a + b) / 2.0))


def classification_report(
    y_true: ArrayLike,
    logits: ArrayLike,
    labels: list[str],
    *,
    temperature: float = 1.0,
    scaled: ArrayLike | None = None,
) -> dict[str, Any]:
    """Every metric the manifest records, as plain JSON-serialisable values. `scaled`:
    the calibrated probabilities when the calibration is not a temperature ("after
    temperature" then means after that calibration)."""
    y = _labels(y_true)
    n = len(labels)
    raw = softmax(logits)
    scaled = softmax(logits, temperature) if scaled is None else np.asarray(scaled, dtype=np.float64)
    pred = scaled.argmax(axis=1)  # the calibrated answer, as a reviewer sees it
    prf = per_class_prf(y, pred, n)
    return {
        "n": int(y.size),
        "accuracy": accuracy(y, pred),
        "balanced_accuracy": balanced_accuracy(y, pred, n),
        "roc_auc": roc_auc(y, scaled),
        "ece_before_temperature": expected_calibration_error(y, raw),
        "ece_after_temperature": expected_calibration_error(y, scaled),
        "nll_before_temperature": nll(y, raw),
        "nll_after_temperature": nll(y, scaled),
        "per_class": per_class_table(prf, labels),
        "confusion_matrix": confusion_matrix(y, pred, n).tolist(),
    }


def reliability_bins(y_true: ArrayLike, probs: ArrayLike, n_bins: int = 10) -> list[dict[str, float | int]]:
    """The reliability diagram's points: per equal-width bin (lo, hi] of top-class
    confidence, how many images fell in it, their mean confidence and how often the top
    class was right. Empty bins are left out."""
    y = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out: list[dict[str, float | int]] = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            out.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "n": int(mask.sum()),
                    "confidence": float(conf[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return out


BOOTSTRAP_REPS = 1000
BOOTSTRAP_METHOD = f"stratified percentile bootstrap, {BOOTSTRAP_REPS} resamples"


def bootstrap_intervals(
    y_true: ArrayLike, probs: ArrayLike, *, reps: int = BOOTSTRAP_REPS, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of accuracy, balanced accuracy, ROC AUC and ECE.
    Resampling is stratified (each class resampled within itself, keeping its count), so
    every resample holds every class and AUC is always defined."""
    y = _labels(y_true)
    p = np.asarray(probs, dtype=np.float64)
    k = p.shape[1]
    groups = [np.flatnonzero(y == c) for c in range(k)]
    rng = np.random.default_rng(seed)
    names = ("accuracy", "balanced_accuracy", "roc_auc", "ece")
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(reps):
        idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups if g.size])
        yy, pp = y[idx], p[idx]
        pred = pp.argmax(axis=1)
        samples["accuracy"].append(accuracy(yy, pred))
        samples["balanced_accuracy"].append(balanced_accuracy(yy, pred, k))
        samples["roc_auc"].append(roc_auc(yy, pp))
        samples["ece"].append(expected_calibration_error(yy, pp))
    tail = (1.0 - level) / 2.0 * 100.0
    return {name: [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))] for name, v in samples.items()}
