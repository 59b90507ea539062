"""Two models on the same cases, against the same reference (the physicians' signed
stages): accuracy with McNemar's exact test, per-stage recall, ROC AUC with a paired
bootstrap, and calibration (ECE). No Django: the comparison page and the tests call it.

McNemar's exact test is the binomial test on the discordant pairs (one model right,
the other wrong), which is what the paired design asks for: both models saw the same
images, so an unpaired test of two accuracies would ignore that correlation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binomtest  # type: ignore[import-untyped]

from . import metrics as M

BOOTSTRAP_RESAMPLES = 2000
ECE_BINS = 10


@dataclass(frozen=True)
class ModelFigures:
    accuracy: float
    recall: dict[str, float]  # per stage; NaN where the stage never occurs in the reference
    auc: float | None  # None when a stage is missing from the reference
    ece: float


def _figures(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> ModelFigures:
    k = len(labels)
    pred = probs.argmax(axis=1)
    confusion = M.confusion_matrix(y, pred, k)
    support = confusion.sum(axis=1)
    recall = {
        label: (float(confusion[i, i] / support[i]) if support[i] else float("nan")) for i, label in enumerate(labels)
    }
    try:
        auc: float | None = M.roc_auc(y, probs)
    except ValueError:
        auc = None
    return ModelFigures(
        accuracy=M.accuracy(y, pred),
        recall=recall,
        auc=auc,
        ece=M.expected_calibration_error(y, probs, n_bins=ECE_BINS),
    )


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> tuple[int, int, float]:
    """(a right & b wrong, a wrong & b right, two-sided exact p-value)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap_auc(
    y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *, resamples: int, seed: int
) -> tuple[float, float, float, float] | None:
    """AUC(b) - AUC(a) on the same cases: (difference, 2.5 %, 97.5 %, two-sided p) from
    resamples of case indices shared by both models (a resample missing a stage is
    drawn again). None when AUC is undefined."""
    try:
        observed = M.roc_auc(y, probs_b) - M.roc_auc(y, probs_a)
    except ValueError:
        return None
    rng = np.random.default_rng(seed)
    n, k = y.size, probs_a.shape[1]
    diffs: list[float] = []
    attempts = 0
    while len(diffs) < resamples and attempts < resamples * 5:
        attempts += 1
        idx = rng.integers(0, n, size=n)
        if np.unique(y[idx]).size < k:
            continue
        diffs.append(M.roc_auc(y[idx], probs_b[idx]) - M.roc_auc(y[idx], probs_a[idx]))
    if not diffs:
        return None
    d = np.asarray(diffs)
    lo, hi = np.percentile(d, [2.5, 97.5])
    # Percentile-bootstrap p: how often the resampled difference lies on the other side
    # of zero, doubled (capped at 1).
    p = min(1.0, 2.0 * min(float(np.mean(d <= 0)), float(np.mean(d >= 0))))
    return float(observed), float(lo), float(hi), p


def compare_paired(
    y_true: ArrayLike,
    probs_active: ArrayLike,
    probs_candidate: ArrayLike,
    labels: Sequence[str],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of a candidate against the active model on the same cases."""
    y = np.asarray(y_true, dtype=np.int64)
    a = np.asarray(probs_active, dtype=np.float64)
    b = np.asarray(probs_candidate, dtype=np.float64)
    if y.size == 0:
        raise ValueError("no cases to compare")
    if a.shape != b.shape or a.shape != (y.size, len(labels)):
        raise ValueError("both models need one probability per stage for every case")
    fa, fb = _figures(y, a, labels), _figures(y, b, labels)
    only_active, only_candidate, p_mcnemar = mcnemar_exact(a.argmax(axis=1) == y, b.argmax(axis=1) == y)
    boot = paired_bootstrap_auc(y, a, b, resamples=resamples, seed=seed)
    return {
        "n": int(y.size),
        "labels": list(labels),
        "support": {label: int(np.sum(y == i)) for i, label in enumerate(labels)},
        "active": fa.__dict__,
        "candidate": fb.__dict__,
        "mcnemar": {
            "active_only_correct": only_active,
            "candidate_only_correct": only_candidate,
            "p_value": p_mcnemar,
        },
        "auc_difference": None
        if boot is None
        else {"difference": boot[0], "ci_low": boot[1], "ci_high": boot[2], "p_value": boot[3], "resamples": resamples},
    }
