from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ml.bundle import BundleError
from diagnostics.ml.metrics import softmax
from diagnostics.ml.runner import InferenceRunner

from .conftest import DEMO_BUNDLE, PCAM


@pytest.fixture(scope="module")
def runner() -> InferenceRunner:
    return InferenceRunner(DEMO_BUNDLE)


def pcam_batch(runner: InferenceRunner, n: int) -> np.ndarray:
    files = sorted((PCAM / "valid" / "metastasis").iterdir())[: n // 2]
    files += sorted((PCAM / "valid" / "no-metastasis").iterdir())[: n - len(files)]
    return np.stack([runner.preprocess(f.read_bytes()) for f in files])


def test_demo_bundle_gives_one_probability_per_label(runner: InferenceRunner) -> None:
    assert runner.labels == runner.manifest.labels == ["no-metastasis", "metastasis"]
    assert runner.input_size == 96
    batch = pcam_batch(runner, 6)
    assert batch.shape == (6, 96, 96, 3) and batch.dtype == np.uint8
    probs = runner.predict_arrays(batch)
    assert probs.shape == (6, len(runner.labels))
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs >= 0).all()


def test_probabilities_are_temperature_scaled_logits(runner: InferenceRunner) -> None:
    batch = pcam_batch(runner, 3)
    logits = runner.bare_call(batch)
    assert logits.shape == (3, 2)
    expected = softmax(logits, runner.manifest.temperature)
    assert np.allclose(runner.predict_arrays(batch), expected, atol=1e-6)


def test_batch_sizes_share_one_compiled_call(runner: InferenceRunner) -> None:
    for n in (1, 2, 5, 7):
        assert runner.predict_arrays(np.zeros((n, 96, 96, 3), np.uint8)).shape == (n, 2)
    # Per compiled function (bare and with heat maps): batch 1 from warm-up plus at
    # most one relaxed (dynamic-batch) trace under TensorFlow.
    assert runner.trace_count <= 4


def test_wrong_shapes_and_empty_batches(runner: InferenceRunner) -> None:
    with pytest.raises(ValueError, match="expected a batch"):
        runner.predict_arrays(np.zeros((96, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="expected a batch"):
        runner.predict_arrays(np.zeros((1, 64, 64, 3), np.uint8))
    assert runner.predict_arrays(np.zeros((0, 96, 96, 3), np.uint8)).shape == (0, 2)


def test_tampered_bundle_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "demo"
    shutil.copytree(DEMO_BUNDLE, bundle)
    with (bundle / "model.keras").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="does not match"):
        InferenceRunner(bundle)


def test_label_count_mismatch_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "demo"
    shutil.copytree(DEMO_BUNDLE, bundle)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["labels"] = ["N0", "N1", "N2"]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="2 outputs but the manifest lists 3 labels"):
        InferenceRunner(bundle)
