"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diagnostics.ml import metrics as M


def test_confusion_accuracy_and_per_class() -> None:
    y = [0, 1, 2, 2, 1]
    p = [0, 2, 2, 2, 1]
    assert M.confusion_matrix(y, p, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 2]]
    assert M.accuracy(y, p) == pytest.approx(0.8)
    assert M.balanced_accuracy(y, p, 3) == pytest.approx((1 + 0.5 + 1) / 3)
    prf = M.per_class_prf(y, p, 3)
    assert prf["precision"].tolist() == pytest.approx([1.0, 1.0, 2 / 3])
    assert prf["recall"].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert prf["f1"].tolist() == pytest.approx([1.0, 2 / 3, 0.8])
    assert prf["support"].tolist() == [1, 2, 2]


def test_precision_of_a_never_predicted_class_is_zero() -> None:
    prf = M.per_class_prf([0, 1], [0, 0], 2)
    assert prf["precision"].tolist() == [0.5, 0.0]
    assert prf["f1"][1] == 0.0


def test_binary_auc_rank_statistic() -> None:
    # Positive/negative pairs: (0.35 vs 0.1 ok, 0.35 vs 0.4 wrong, 0.8 vs both ok) = 3/4.
    assert M.roc_auc_binary([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.roc_auc_binary([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    assert M.roc_auc_binary([1, 0, 1], [0.9, 0.2, 0.2]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.roc_auc_binary([1, 1], [0.2, 0.3])


def test_two_column_auc_uses_class_one() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert M.roc_auc([0, 0, 1, 1], probs) == pytest.approx(0.75)


def test_macro_one_vs_rest_auc() -> None:
    y = [0, 1, 2, 0]
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.15, 0.5, 0.35]])
    # class 0: 3 of 4 pairs; class 1: 2.5 of 3 (one tie); class 2: 3 of 3.
    assert M.roc_auc(y, probs) == pytest.approx((0.75 + 2.5 / 3 + 1.0) / 3)


def test_expected_calibration_error() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    y = [0, 1, 1, 1]
    # bins: {0.9, 0.9} acc 0.5 -> 0.4 * 2/4; {0.7} acc 1 -> 0.3/4; {0.6} acc 1 -> 0.4/4
    assert M.expected_calibration_error(y, probs) == pytest.approx(0.2 + 0.075 + 0.1)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.expected_calibration_error([0, 1], perfect) == 0.0


def test_nll_and_softmax() -> None:
    probs = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert M.nll([0, 1], probs) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    logits = np.array([[2.0, 0.0], [0.0, 1000.0]])
    sm = M.softmax(logits)
    assert sm.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert sm[0, 0] == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    assert M.softmax(logits, 2.0)[0, 0] == pytest.approx(math.e / (math.e + 1))
    assert M.nll_from_logits([0], logits[:1]) == pytest.approx(-math.log(sm[0, 0]))


def test_fit_temperature_fixes_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 3)) * 1.5
    y = np.array([rng.choice(3, p=p) for p in M.softmax(z)])
    overconfident = 3.0 * z  # the true temperature is 3
    t = M.fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    assert M.nll_from_logits(y, overconfident, t) < M.nll_from_logits(y, overconfident)
    before = M.expected_calibration_error(y, M.softmax(overconfident))
    after = M.expected_calibration_error(y, M.softmax(overconfident, t))
    assert after < before


def test_classification_report_shape() -> None:
    logits = np.array([[2.0, 0.0], [0.5, 0.0], [0.0, 1.0], [0.0, 3.0]])
    r = M.classification_report([0, 1, 1, 1], logits, ["a", "b"], temperature=2.0)
    assert r["n"] == 4
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["confusion_matrix"] == [[1, 0], [1, 2]]
    assert r["per_class"]["b"]["support"] == 3
    assert r["nll_after_temperature"] != r["nll_before_temperature"]
