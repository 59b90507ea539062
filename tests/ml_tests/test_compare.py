"""The paired comparison of two models on the same cases, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diagnostics.ml import metrics as M
from diagnostics.ml.compare import compare_paired, mcnemar_exact


def test_mcnemar_exact_on_a_hand_counted_table():
    # 1 case right only for A, 6 only for B: two-sided binomial p = 2 * (C(7,0) + C(7,1)) / 2**7.
    a = [True] * 3 + [True] + [False] * 6
    b = [True] * 3 + [False] + [True] * 6
    assert mcnemar_exact(a, b) == (1, 6, pytest.approx(2 * (1 + 7) / 128))
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)


def test_compare_paired_figures():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # Active: two mistakes (cases 3 and 7); candidate: none, and every score ranks right.
    active = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.6, 0.4]])
    candidate = np.array(
        [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6]]
    )
    out = compare_paired(y, active, candidate, ["neg", "pos"], resamples=500, seed=3)
    assert out["n"] == 8 and out["support"] == {"neg": 4, "pos": 4}
    assert out["active"]["accuracy"] == 0.75 and out["candidate"]["accuracy"] == 1.0
    assert out["active"]["recall"] == {"neg": 0.75, "pos": 0.75}
    assert out["candidate"]["recall"] == {"neg": 1.0, "pos": 1.0}
    assert out["mcnemar"] == {"active_only_correct": 0, "candidate_only_correct": 2, "p_value": 0.5}
    # Active AUC by hand: of the 16 (positive, negative) pairs only (0.4, 0.6) is ranked wrong.
    assert out["active"]["auc"] == pytest.approx(15 / 16)
    assert out["candidate"]["auc"] == 1.0
    diff = out["auc_difference"]
    assert diff["difference"] == pytest.approx(1 / 16)
    assert diff["ci_low"] <= diff["difference"] <= diff["ci_high"]
    assert 0.0 <= diff["p_value"] <= 1.0
    assert out["active"]["ece"] == pytest.approx(M.expected_calibration_error(y, active, n_bins=10))


def test_a_missing_stage_leaves_auc_undefined_not_wrong():
    y = np.array([0, 0, 0])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6]])
    out = compare_paired(y, probs, probs, ["neg", "pos"], resamples=50)
    assert out["active"]["auc"] is None and out["auc_difference"] is None
    assert math.isnan(out["active"]["recall"]["pos"])
