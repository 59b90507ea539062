"""Reader-study agreement statistics against values worked out by hand and the
published example tables, and the bootstrap kernels against the libraries."""

from __future__ import annotations

import numpy as np
import pytest

from diagnostics.ml.agreement import (
    MISSING,
    category_counts,
    cohen_kappa,
    fleiss_kappa,
    fleiss_weighted,
    kappa_weighted,
    majority,
    sample_weights,
    study_statistics,
)

# Fleiss (1971) as tabulated on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters
# each, 5 categories. P-bar = 0.378, P-bar-e = 0.213, kappa = 0.210.
FLEISS_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def _pairs(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Two raters' ratings from a contingency table (rows: first rater, columns: second)."""
    a, b = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            a += [i] * count
            b += [j] * count
    return np.array(a), np.array(b)


def test_fleiss_kappa_of_the_published_example():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.20993, abs=5e-5)
    assert round(fleiss_kappa(FLEISS_TABLE), 3) == 0.210
    # The vectorised bootstrap kernel gives the same value on the original sample.
    assert fleiss_weighted(sample_weights(10), FLEISS_TABLE)[0] == pytest.approx(0.20993, abs=5e-5)


def test_cohen_kappa_of_the_textbook_yes_no_example():
    """Wikipedia's "Cohen's kappa" example: 50 applications, A and B both yes 20, A yes
    B no 5, A no B yes 10, both no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4."""
    a, b = _pairs([[20, 5], [10, 15]])
    assert len(a) == 50
    assert cohen_kappa(a, b, 2) == pytest.approx(0.4)
    assert kappa_weighted(sample_weights(50), a, b, 2)[0] == pytest.approx(0.4)


def test_quadratic_weighted_kappa_by_hand():
    """a = 0 0 1 1 2 2, b = 0 1 1 2 2 2. Observed (rows a): [[1,1,0],[0,1,1],[0,0,2]];
    row sums 2 2 2, column sums 1 2 3, expected E_ij = r_i c_j / 6. With w = (i-j)²:
    Σ w·O = 1 + 1 = 2, Σ w·E = 14/3 + 4/3 + 2 = 8, so kappa_w = 1 - 2/8 = 0.75.
    Unweighted: p_o = 4/6, p_e = (2·1 + 2·2 + 2·3)/36 = 1/3, kappa = (2/3-1/3)/(2/3) = 0.5."""
    a, b = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2, 2])
    assert cohen_kappa(a, b, 3, weights="quadratic") == pytest.approx(0.75)
    assert cohen_kappa(a, b, 3) == pytest.approx(0.5)
    assert kappa_weighted(sample_weights(6), a, b, 3, weights="quadratic")[0] == pytest.approx(0.75)


def test_kappa_is_undefined_when_everybody_says_the_same():
    a = np.array([1, 1, 1, 1])
    assert cohen_kappa(a, a, 3) is None
    assert fleiss_kappa(category_counts(np.array([[1, 1], [1, 1]]), 3)) is None


def test_bootstrap_kernels_match_the_libraries_on_random_tables():
    rng = np.random.default_rng(7)
    for k in (2, 3, 5):
        a, b = rng.integers(0, k, 40), rng.integers(0, k, 40)
        for weights in (None, "quadratic"):
            assert kappa_weighted(sample_weights(40), a, b, k, weights=weights)[0] == pytest.approx(
                cohen_kappa(a, b, k, weights=weights)
            )
        ratings = rng.integers(0, k, (30, 4))
        counts = category_counts(ratings, k)
        assert fleiss_weighted(sample_weights(30), counts)[0] == pytest.approx(fleiss_kappa(counts))


def test_majority_leaves_ties_and_unread_scans_out():
    ratings = np.array([[0, 0, 1], [2, 1, MISSING], [1, 1, 1], [MISSING, MISSING, MISSING]])
    assert majority(ratings, 3).tolist() == [0, MISSING, 1, MISSING]


def test_study_statistics_by_hand():
    """Three readers, five scans, stages 0..2. Reader 0 = 0 1 2 2 0, reader 1 = 0 1 2 1 0,
    reader 2 = 0 1 1 2 0. Majority: 0 1 2 2 0. Reader 0 agrees 5/5, readers 1 and 2 4/5.
    The AI says 0 1 2 2 1: 4/5. Pair (0,1): p_o = 4/5; marginals r0 = (2,1,2), r1 = (2,2,1),
    p_e = (4 + 2 + 2)/25 = 8/25, kappa = (20/25 - 8/25)/(17/25) = 12/17."""
    ratings = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 1], [2, 1, 2], [0, 0, 0]])
    ai = np.array([0, 1, 2, 2, 1])
    stats = study_statistics(ratings, k=3, ai=ai, replicates=500, seed=3)
    assert stats.reference_kind == "majority"
    first = stats.pairs[0]
    assert (first.first, first.second) == (0, 1)
    assert first.kappa.value == pytest.approx(12 / 17)
    assert first.confusion == [[2, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert first.kappa.low is not None and first.kappa.low <= first.kappa.value <= first.kappa.high
    shares = [v.agreement.value for v in stats.versus_reference]
    assert shares == [pytest.approx(1.0), pytest.approx(0.8), pytest.approx(0.8), pytest.approx(0.8)]
    assert stats.versus_reference[-1].rater is None  # the AI comes last
    assert stats.fleiss.n == 5
    # The same seed gives the same intervals (a page shows the same figures every time).
    again = study_statistics(ratings, k=3, ai=ai, replicates=500, seed=3)
    assert again.pairs[0].kappa == first.kappa


def test_an_adjudicated_reference_replaces_the_majority():
    ratings = np.array([[0, 0], [1, 1], [2, 2]])
    reference = np.array([0, 2, MISSING])
    stats = study_statistics(ratings, k=3, reference=reference, replicates=200)
    assert stats.reference_kind == "adjudicated"
    assert stats.versus_reference[0].agreement.value == pytest.approx(0.5)
    assert stats.versus_reference[0].agreement.n == 2


def test_a_replicate_of_draw_counts_is_the_resampled_table():
    """Each bootstrap replicate is computed from how often each scan was drawn; it must
    equal the library's value on the explicitly resampled scans."""
    from diagnostics.ml.agreement import _resamples

    rng = np.random.default_rng(11)
    a, b = rng.integers(0, 3, 25), rng.integers(0, 3, 25)
    ratings = rng.integers(0, 3, (25, 4))
    counts = category_counts(ratings, 3)
    draws = _resamples(25, 5, seed=1, stream=1)
    assert (draws.sum(axis=1) == 25).all()
    for row, weights in zip(kappa_weighted(draws, a, b, 3, weights="quadratic"), draws, strict=True):
        picked = np.repeat(np.arange(25), weights.astype(int))
        assert row == pytest.approx(cohen_kappa(a[picked], b[picked], 3, weights="quadratic"))
    for row, weights in zip(fleiss_weighted(draws, counts), draws, strict=True):
        assert row == pytest.approx(fleiss_kappa(counts[np.repeat(np.arange(25), weights.astype(int))]))
