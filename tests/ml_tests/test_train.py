from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ml.augment import augment_batch
from diagnostics.ml.bundle import verify_bundle
from diagnostics.ml.datasets import DatasetError, resolve_layout
from diagnostics.ml.runner import InferenceRunner
from diagnostics.ml.train import TrainConfig, main, train_bundle

from .conftest import write_class_folder


def test_tiny_training_run_writes_a_loadable_bundle(synthetic_data: Path, tmp_path: Path) -> None:
    (synthetic_data / "benign" / "broken.png").write_bytes(b"not a png")
    (synthetic_data / "benign" / "notes.txt").write_text("not an image")
    out = tmp_path / "bundle"
    config = TrainConfig(
        data=synthetic_data, out=out, name="toy", version="0.1", epochs=1, image_size=32, batch_size=8, verbose=0
    )
    manifest = train_bundle(config)

    assert verify_bundle(out) == manifest
    assert manifest.labels == ["benign", "adverse"]  # dataset.json order, not alphabetical
    assert manifest.input_size == 32 and manifest.temperature > 0
    summary = manifest.data_summary
    assert summary["label_order_source"] == "dataset.json"
    assert summary["unreadable_skipped"]["train"] + summary["unreadable_skipped"]["valid"] == 1
    assert summary["ignored_non_image_files"] == 1
    assert summary["splits"]["valid"]["adverse"] == 2  # 20 % of 12, stratified
    assert summary["splits"]["train"]["adverse"] == 10
    # No test split: the validation split is halved, per class, into select and report.
    select, report = manifest.metrics["select"], manifest.metrics["report"]
    assert manifest.metrics["split"] == "report"
    assert select["n"] + report["n"] == sum(summary["splits"]["valid"].values())
    assert "seeded half B" in manifest.metrics["roles"]["report"]
    assert 0.0 <= report["roc_auc"] <= 1.0
    assert manifest.metrics["training"]["epochs_run"] == 1
    assert set(manifest.library_versions) >= {"tensorflow", "keras", "numpy", "pillow"}
    reference = manifest.drift_reference  # the drift check's reference, from the selection images
    assert len(reference["confidences"]) == select["n"] and len(reference["colour"]) == 3
    assert all(abs(sum(channel) - 1.0) < 1e-9 for channel in reference["colour"])
    assert "not validated for clinical use" in (out / "MODEL_CARD.md").read_text()

    runner = InferenceRunner(out)
    probs = runner.predict_arrays(np.zeros((3, 32, 32, 3), np.uint8))
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1.0)


def test_given_train_and_valid_folders_are_used(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("valid", 3)):
        write_class_folder(tmp_path / "d" / split / "N0", n, (200, 60, 60), seed=1)
        write_class_folder(tmp_path / "d" / split / "N1", n, (60, 60, 200), seed=2)
    layout = resolve_layout(data=tmp_path / "d", train_dir=None, valid_dir=None, valid_fraction=0.2, seed=42)
    assert layout.labels == ["N0", "N1"]
    assert layout.label_order_source.startswith("alphabetical")
    assert [len(layout.train_files[x]) for x in layout.labels] == [6, 6]
    assert [len(layout.valid_files[x]) for x in layout.labels] == [3, 3]


def test_stratified_split_is_reproducible(synthetic_data: Path) -> None:
    a = resolve_layout(data=synthetic_data, train_dir=None, valid_dir=None, valid_fraction=0.25, seed=7)
    b = resolve_layout(data=synthetic_data, train_dir=None, valid_dir=None, valid_fraction=0.25, seed=7)
    assert a.valid_files == b.valid_files
    assert len(a.valid_files["benign"]) == 3
    assert not set(a.valid_files["benign"]) & set(a.train_files["benign"])


def _layout(data: Path) -> None:
    resolve_layout(data=data, train_dir=None, valid_dir=None, valid_fraction=0.2, seed=42)


def test_one_class_is_refused(synthetic_data: Path) -> None:
    shutil.rmtree(synthetic_data / "adverse")
    (synthetic_data / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="only one class folder"):
        _layout(synthetic_data)


def test_empty_class_is_refused(synthetic_data: Path) -> None:
    for f in (synthetic_data / "adverse").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="'adverse' .* contains no images"):
        _layout(synthetic_data)


def test_mismatched_dataset_json_is_refused(synthetic_data: Path) -> None:
    (synthetic_data / "dataset.json").write_text(json.dumps({"labels": ["benign", "malignant"]}))
    with pytest.raises(DatasetError, match="do not match the class folders") as info:
        _layout(synthetic_data)
    assert "labels without a folder: malignant" in str(info.value)
    assert "folders not in dataset.json: adverse" in str(info.value)


def test_valid_folder_with_other_classes_is_refused(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d" / "train" / "N0", 2, (0, 0, 0), seed=1)
    write_class_folder(tmp_path / "d" / "train" / "N1", 2, (0, 0, 0), seed=1)
    write_class_folder(tmp_path / "d" / "valid" / "N0", 2, (0, 0, 0), seed=1)
    with pytest.raises(DatasetError, match="must be the same"):
        _layout(tmp_path / "d")


def test_all_unreadable_class_is_refused(synthetic_data: Path, tmp_path: Path) -> None:
    for f in (synthetic_data / "adverse").iterdir():
        f.write_bytes(b"corrupt")
    config = TrainConfig(data=synthetic_data, out=tmp_path / "b", name="x", version="1", epochs=1, image_size=32)
    with pytest.raises(DatasetError, match="no readable images"):
        train_bundle(config)


def test_cli_reports_bad_folders_plainly(
    synthetic_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(synthetic_data / "adverse")
    rc = main(["--data", str(synthetic_data), "--out", str(tmp_path / "b"), "--name", "x", "--version", "1"])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_augmentation_keeps_shape_and_range() -> None:
    import tensorflow as tf

    batch = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)), tf.float32)
    seed = tf.constant([1, 2], tf.int64)
    out = augment_batch(batch, seed).numpy()
    again = augment_batch(batch, seed).numpy()
    assert out.shape == (4, 16, 16, 3)
    assert out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out, again)  # stateless: same seed, same augmentation
