"""Agreement statistics for reader studies, with percentile bootstrap confidence
intervals. No Django: stages come in as label indices, ``MISSING`` where a reader has
not read a scan (or the AI has no prediction, or there is no reference).

Point estimates come from the libraries that define them: scikit-learn's
``cohen_kappa_score`` (unweighted and ``weights="quadratic"``) and statsmodels'
``fleiss_kappa``. The bootstrap needs thousands of replicates per statistic, so it
uses the same formulas over all replicates at once (each replicate's tables as one
matrix product of draw counts) with numpy;
tests/ml_tests/test_agreement.py checks that these kernels give the libraries' values.

Which scans count: a pair's kappa uses the scans both readers read; Fleiss' kappa the
scans every reader read; agreement with the reference the scans that the rater read and
that have a reference. Resampling is over scans (the subjects), with a fixed seed so a
study's page shows the same intervals every time it is opened.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as _statsmodels_fleiss_kappa

MISSING = -1
DEFAULT_REPLICATES = 2000
Ints = NDArray[np.int64]


@dataclass(frozen=True)
class Estimate:
    """A statistic with its 95 % percentile bootstrap interval; None where undefined
    (too few scans, or every rating in one category so chance agreement is 1)."""

    value: float | None
    low: float | None
    high: float | None
    n: int  # scans it was computed on


@dataclass(frozen=True)
class PairAgreement:
    first: int
    second: int
    kappa: Estimate
    weighted_kappa: Estimate
    confusion: list[list[int]]  # rows: first reader's stage, columns: second reader's


@dataclass(frozen=True)
class ReferenceAgreement:
    rater: int | None  # reader index, None for the AI
    agreement: Estimate  # proportion of scans on which the rater gave the reference stage
    kappa: Estimate
    weighted_kappa: Estimate
    confusion: list[list[int]]  # rows: reference stage, columns: the rater's


@dataclass(frozen=True)
class StudyStatistics:
    k: int
    reference_kind: str  # "adjudicated" | "majority"
    pairs: list[PairAgreement] = field(default_factory=list)
    fleiss: Estimate = Estimate(None, None, None, 0)
    versus_reference: list[ReferenceAgreement] = field(default_factory=list)


# --- the libraries' point estimates --------------------------------------------------


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def cohen_kappa(a: Ints, b: Ints, k: int, *, weights: str | None = None) -> float | None:
    """Cohen's kappa of two raters' stage indices (scikit-learn), None when undefined."""
    if len(a) == 0:
        return None
    with warnings.catch_warnings():
        # Undefined (0/0) when chance agreement is 1; scikit-learn warns and gives nan.
        warnings.simplefilter("ignore")
        value = cohen_kappa_score(a, b, labels=list(range(k)), weights=weights)
    return _finite(value)


def category_counts(ratings: Ints, k: int) -> Ints:
    """Subjects × categories: how many raters put each subject in each category."""
    counts = np.zeros((ratings.shape[0], k), dtype=np.int64)
    for j in range(k):
        counts[:, j] = (ratings == j).sum(axis=1)
    return counts


def fleiss_kappa(counts: Ints) -> float | None:
    """Fleiss' kappa of a subjects × categories count table (statsmodels), every
    subject rated by the same number of raters."""
    if counts.shape[0] == 0:
        return None
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return _finite(_statsmodels_fleiss_kappa(counts, method="fleiss"))


def majority(ratings: Ints, k: int) -> Ints:
    """Each scan's most frequent stage among the readers who read it; MISSING where
    nobody read it or the most frequent stages tie (no majority, left out)."""
    counts = category_counts(ratings, k)
    top = counts.max(axis=1)
    winners = (counts == top[:, None]).sum(axis=1)
    out: Ints = counts.argmax(axis=1).astype(np.int64)
    out[(top == 0) | (winners > 1)] = MISSING
    return out


# --- the same formulas over bootstrap replicates ------------------------------------


def _weights(k: int, weights: str | None) -> NDArray[np.float64]:
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    w: NDArray[np.float64] = ((i - j) ** 2 if weights == "quadratic" else (i != j)).astype(np.float64)
    return w


def confusion_weighted(w: NDArray[np.float64], a: Ints, b: Ints, k: int) -> NDArray[np.float64]:
    """Replicates × k × k confusion counts. ``w`` is replicates × subjects: how often
    each subject is drawn in each bootstrap replicate (all ones: the sample itself), so
    a replicate's table is one matrix product instead of indexing a resampled copy."""
    onehot = np.zeros((len(a), k * k))
    onehot[np.arange(len(a)), a * k + b] = 1.0
    confusion: NDArray[np.float64] = (w @ onehot).reshape(w.shape[0], k, k)
    return confusion


def kappa_weighted(
    w: NDArray[np.float64], a: Ints, b: Ints, k: int, *, weights: str | None = None
) -> NDArray[np.float64]:
    """Cohen's kappa, 1 - Σ w·observed / Σ w·expected, for each replicate (row of ``w``)."""
    observed = confusion_weighted(w, a, b, k)
    n = observed.sum(axis=(1, 2), keepdims=True)
    expected = observed.sum(axis=2)[:, :, None] * observed.sum(axis=1)[:, None, :] / n
    cost = _weights(k, weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa: NDArray[np.float64] = 1.0 - (cost * observed).sum(axis=(1, 2)) / (cost * expected).sum(axis=(1, 2))
    return kappa


def fleiss_weighted(w: NDArray[np.float64], counts: Ints) -> NDArray[np.float64]:
    """Fleiss' kappa for each replicate of a subjects × categories count table."""
    c = counts.astype(np.float64)
    raters = c[0].sum() if c.size else 0.0
    subjects = w.sum(axis=1)
    p_j = (w @ c) / (subjects * raters)[:, None]
    p_i = ((c * c).sum(axis=1) - raters) / (raters * (raters - 1))
    p_bar = (w @ p_i) / subjects
    p_e = (p_j * p_j).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa: NDArray[np.float64] = (p_bar - p_e) / (1.0 - p_e)
    return kappa


def sample_weights(n: int) -> NDArray[np.float64]:
    """The weights of the sample itself: one replicate, every subject once."""
    return np.ones((1, n))


def _interval(replicates: NDArray[np.float64]) -> tuple[float | None, float | None]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return None, None
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _resamples(n: int, replicates: int, seed: int, stream: int) -> NDArray[np.float64]:
    """Replicates × n draw counts: n subjects drawn with replacement, per replicate."""
    rng = np.random.default_rng([seed, stream])
    idx = rng.integers(0, n, size=(replicates, n), dtype=np.int64) + (np.arange(replicates)[:, None] * n)
    counts = np.bincount(idx.ravel(), minlength=replicates * n).reshape(replicates, n)
    return counts.astype(np.float64)


# --- a whole study -------------------------------------------------------------------


def study_statistics(
    ratings: Ints,
    *,
    k: int,
    ai: Ints | None = None,
    reference: Ints | None = None,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> StudyStatistics:
    """Every agreement figure of a study. ``ratings`` is scans × readers (MISSING where
    unread), ``ai`` the AI's stage per scan, ``reference`` the adjudicated stage per scan
    (all MISSING, or None: the readers' majority is the reference)."""
    ratings = np.asarray(ratings, dtype=np.int64)
    n_scans, n_readers = ratings.shape
    cache: dict[int, NDArray[np.float64]] = {}

    def draws_for(n: int) -> NDArray[np.float64]:
        """One set of resamples per sample size, shared by every statistic over that many
        scans (with complete reads: all of them, so the figures move together)."""
        if n not in cache:
            cache[n] = _resamples(n, replicates, seed, stream=n)
        return cache[n]

    def pair_estimates(a: Ints, b: Ints) -> tuple[Estimate, Estimate]:
        out = []
        for weights in (None, "quadratic"):
            value = cohen_kappa(a, b, k, weights=weights)
            if value is None or len(a) < 2:
                out.append(Estimate(value, None, None, len(a)))
                continue
            draws = draws_for(len(a))
            low, high = _interval(kappa_weighted(draws, a, b, k, weights=weights))
            out.append(Estimate(value, low, high, len(a)))
        return out[0], out[1]

    def confusion(a: Ints, b: Ints) -> list[list[int]]:
        if not len(a):
            return [[0] * k for _ in range(k)]
        return [[int(round(x)) for x in row] for row in confusion_weighted(sample_weights(len(a)), a, b, k)[0]]

    pairs = []
    for i in range(n_readers):
        for j in range(i + 1, n_readers):
            both = (ratings[:, i] != MISSING) & (ratings[:, j] != MISSING)
            a, b = ratings[both, i], ratings[both, j]
            kappa, weighted = pair_estimates(a, b)
            pairs.append(PairAgreement(i, j, kappa, weighted, confusion(a, b)))

    fleiss = Estimate(None, None, None, 0)
    if n_readers >= 2:
        complete = (ratings != MISSING).all(axis=1)
        counts = category_counts(ratings[complete], k)
        value = fleiss_kappa(counts)
        if value is not None and len(counts) >= 2:
            draws = draws_for(len(counts))
            low, high = _interval(fleiss_weighted(draws, counts))
            fleiss = Estimate(value, low, high, len(counts))
        else:
            fleiss = Estimate(value, None, None, len(counts))

    if reference is not None and (np.asarray(reference) != MISSING).any():
        ref, kind = np.asarray(reference, dtype=np.int64), "adjudicated"
    else:
        ref, kind = majority(ratings, k), "majority"

    raters: list[tuple[int | None, Ints]] = [(i, ratings[:, i]) for i in range(n_readers)]
    if ai is not None:
        raters.append((None, np.asarray(ai, dtype=np.int64)))
    versus = []
    for rater, stages in raters:
        usable = (stages != MISSING) & (ref != MISSING)
        a, r = stages[usable], ref[usable]
        if len(a):
            share = float((a == r).mean())
            if len(a) >= 2:
                draws = draws_for(len(a))
                low, high = _interval((draws @ (a == r).astype(np.float64)) / len(a))
            else:
                low = high = None
            agreement = Estimate(share, low, high, len(a))
        else:
            agreement = Estimate(None, None, None, 0)
        kappa, weighted = pair_estimates(r, a)
        versus.append(ReferenceAgreement(rater, agreement, kappa, weighted, confusion(r, a)))

    return StudyStatistics(k=k, reference_kind=kind, pairs=pairs, fleiss=fleiss, versus_reference=versus)
