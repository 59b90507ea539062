"""Drift measures against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diagnostics.ml import drift as D


def test_psi_by_hand():
    # (0.5-0.25)*ln(0.5/0.25) + (0.5-0.75)*ln(0.5/0.75)
    assert D.psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(0.25 * math.log(2) - 0.25 * math.log(2 / 3))
    assert D.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_colour_histograms_count_every_pixel_per_channel():
    img = np.zeros((4, 5, 3), dtype=np.uint8)
    img[..., 0] = 255  # red: top bin
    img[:2, :, 2] = 128  # blue: half in the middle bin
    hist = D.colour_histograms(img)
    assert hist.shape == (3, D.COLOUR_BINS) and hist.sum(axis=1).tolist() == [20, 20, 20]
    assert hist[0, -1] == 20 and hist[1, 0] == 20 and hist[2, 8] == 10 and hist[2, 0] == 10


def test_size_histogram_and_ks():
    assert D.size_histogram([(96, 96), (96, 96)]) == D.size_histogram([(100, 100)])
    assert D.ks_p_value([0.1, 0.2, 0.3] * 10, [0.1, 0.2, 0.3] * 10)[1] == pytest.approx(1.0)
    assert D.ks_p_value(np.linspace(0.5, 0.6, 40), np.linspace(0.9, 1.0, 40))[1] < 1e-6
