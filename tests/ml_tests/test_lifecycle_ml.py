"""Model lifecycle, framework-free parts: test split, backbones and local weights, evaluation
metrics against hand-computed values, heat maps in the compiled pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ml.datasets import DatasetError, resolve_layout
from diagnostics.ml.evaluate import EvaluationError, collect_folder, evaluate_bundle, evaluation_metrics
from diagnostics.ml.heatmap import heatmap_png
from diagnostics.ml.models import build_model
from diagnostics.ml.runner import InferenceRunner
from diagnostics.ml.train import TrainConfig, train_bundle

from .conftest import DEMO_BUNDLE, write_class_folder

Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.2, 0.6, 0.2],
        [0.1, 0.3, 0.6],
        [0.1, 0.2, 0.7],
        [0.3, 0.1, 0.6],
    ]
)


def test_evaluation_metrics_match_hand_computed_values() -> None:
    m = evaluation_metrics(Y, P, ["normal", "benign", "malignant"])
    assert m["labels"] == ["normal", "benign", "malignant"]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 2) / 3)
    # One-vs-rest AUCs counted pair by pair (a tie counts half): 8/8, 7/8, 7.5/8.
    assert m["roc_auc_per_class"] == pytest.approx({"normal": 1.0, "benign": 0.875, "malignant": 0.9375})
    assert m["roc_auc"] == pytest.approx((1.0 + 0.875 + 0.9375) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert m["per_class"]["malignant"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["benign"]["recall"] == pytest.approx(1 / 2)
    # ECE: confidence 0.7 (2 right), 0.5 (wrong), 0.6 (2 of 3 right), weighted by bin size.
    assert m["ece"] == pytest.approx((2 * 0.3 + 1 * 0.5 + 3 * abs(2 / 3 - 0.6)) / 6)


def test_test_split_is_stratified_disjoint_and_reproducible(synthetic_data: Path) -> None:
    a = resolve_layout(
        data=synthetic_data, train_dir=None, valid_dir=None, valid_fraction=0.25, seed=3, test_fraction=0.25
    )
    b = resolve_layout(
        data=synthetic_data, train_dir=None, valid_dir=None, valid_fraction=0.25, seed=3, test_fraction=0.25
    )
    assert a.test_files == b.test_files and a.valid_files == b.valid_files
    for label in a.labels:
        assert [len(a.train_files[label]), len(a.valid_files[label]), len(a.test_files[label])] == [6, 3, 3]
        parts = [set(a.train_files[label]), set(a.valid_files[label]), set(a.test_files[label])]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_training_reports_on_the_held_out_test_split(synthetic_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    config = TrainConfig(
        data=synthetic_data,
        out=out,
        name="toy",
        version="0.2",
        epochs=1,
        image_size=32,
        batch_size=8,
        test_fraction=0.25,
        verbose=0,
    )
    manifest = train_bundle(config)
    assert manifest.metrics["split"] == "report"
    assert manifest.metrics["roles"]["report"] == "test split (6 images)"
    assert manifest.metrics["report"]["n"] == 6
    assert manifest.metrics["select"]["n"] == sum(manifest.data_summary["splits"]["valid"].values())
    assert manifest.data_summary["splits"]["test"] == {"benign": 3, "adverse": 3}
    card = (out / "MODEL_CARD.md").read_text()
    assert "Measured performance: report split (n = 6)" in card
    assert "**report split: test split (6 images)**" in card


def test_bad_weights_file_stops_before_anything_is_written(synthetic_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "w.weights.h5"
    bad.write_bytes(b"not weights")
    out = tmp_path / "never"
    config = TrainConfig(
        data=synthetic_data, out=out, name="t", version="1", epochs=1, image_size=32, weights=bad, verbose=0
    )
    with pytest.raises(ValueError, match="cannot load weights"):
        train_bundle(config)
    assert not out.exists()
    with pytest.raises(DatasetError, match="does not exist"):
        train_bundle(TrainConfig(**{**config.__dict__, "weights": tmp_path / "missing.h5"}))
    assert not out.exists()


def test_local_weights_are_loaded_into_the_model(tmp_path: Path) -> None:
    source = build_model("small_cnn", 32, 2)
    path = tmp_path / "start.weights.h5"
    source.save_weights(path)
    loaded = build_model("small_cnn", 32, 2, weights=path)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("backbone", ["efficientnetb0", "resnet50", "mobilenetv3small"])
def test_applications_backbones_build_without_downloading(backbone: str) -> None:
    model = build_model(backbone, 32, 3)
    assert model.output_shape == (None, 3)
    out = np.asarray(model(np.zeros((1, 32, 32, 3), np.float32), training=False))
    assert out.shape == (1, 3) and np.isfinite(out).all()


def test_heat_maps_come_from_the_same_pass_as_the_probabilities() -> None:
    runner = InferenceRunner(DEMO_BUNDLE)
    x = np.random.default_rng(1).integers(0, 255, (4, 96, 96, 3)).astype(np.uint8)
    probs, cams = runner.predict_with_heatmaps(x)
    assert np.allclose(probs, runner.predict_arrays(x), atol=1e-6)
    assert cams.shape[0] == 4 and cams.ndim == 3
    assert cams.min() >= 0.0 and cams.max() <= 1.0 + 1e-6
    png = heatmap_png(cams[0], size=96)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_bundle_writes_metrics_plots_and_report(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    write_class_folder(folder / "no-metastasis", 3, (220, 180, 200), seed=1, size=96)
    write_class_folder(folder / "metastasis", 3, (120, 40, 140), seed=2, size=96)
    out = tmp_path / "report"
    result = evaluate_bundle(DEMO_BUNDLE, folder, out)
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("labels", "accuracy", "balanced_accuracy", "roc_auc", "ece", "per_class", "confusion_matrix"):
        assert key in saved
    assert saved["n"] == 6 and result["labels"] == ["no-metastasis", "metastasis"]
    for name in ("confusion_matrix.png", "roc_curves.png", "reliability.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "balanced accuracy" in (out / "report.md").read_text()


def test_evaluation_refuses_unknown_folders(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "metastasis", 1, (1, 2, 3), seed=1)
    write_class_folder(tmp_path / "tumour", 1, (1, 2, 3), seed=1)
    with pytest.raises(EvaluationError, match="tumour .* not labels of this model"):
        collect_folder(tmp_path, ["no-metastasis", "metastasis"])
