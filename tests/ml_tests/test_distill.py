"""Distillation (`--distill-from`) on a handful of images: the loss is the formula, the
student learns the teacher's answers rather than only the labels, the teacher's part is
recorded in the manifest and on the card, and a teacher trained on another split or
for other inputs is refused before any network is built."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ml import metrics as M
from diagnostics.ml.datasets import DatasetError
from diagnostics.ml.distill import distillation_loss, pack_targets, soft_targets
from diagnostics.ml.runner import InferenceRunner
from diagnostics.ml.train import TrainConfig, class_weights, make_train_dataset, train_bundle

from .conftest import write_class_folder

RED, BLUE = (200, 80, 80), (80, 80, 200)


def _data(root: Path, *, benign: tuple[int, int, int], adverse: tuple[int, int, int], n: int = 12) -> Path:
    write_class_folder(root / "benign", n, benign, seed=1)
    write_class_folder(root / "adverse", n, adverse, seed=2)
    (root / "dataset.json").write_text(json.dumps({"name": "toy", "labels": ["benign", "adverse"]}))
    return root


def _config(data: Path, out: Path, **changes: object) -> TrainConfig:
    config = TrainConfig(
        data=data,
        out=out,
        name="toy",
        version="1",
        epochs=4,
        image_size=32,
        batch_size=6,
        learning_rate=1e-2,
        test_fraction=0.25,
        valid_fraction=0.25,
        tta="flip-lr",
        verbose=0,
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The toy data, the same images with the two labels swapped, and a teacher trained
    on the swapped folder: on the real images it answers the wrong class, confidently."""
    root = tmp_path_factory.mktemp("distill")
    data = _data(root / "data", benign=RED, adverse=BLUE)
    swapped = _data(root / "swapped", benign=BLUE, adverse=RED)
    teacher = root / "teacher"
    train_bundle(_config(swapped, teacher))
    return {"data": data, "teacher": teacher, "root": root}


def reference_loss(labels: np.ndarray, soft: np.ndarray, logits: np.ndarray, weight: float, t: float) -> np.ndarray:
    """The distillation loss per image, written out in NumPy."""
    hard = -M.log_softmax(logits)[np.arange(len(labels)), labels]
    ce_soft = -(soft * M.log_softmax(logits, t)).sum(axis=1)
    out: np.ndarray = (1.0 - weight) * hard + weight * t**2 * ce_soft
    return out


def test_the_loss_is_the_weighted_hard_and_softened_cross_entropies() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 1])
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    soft = soft_targets(rng.normal(size=(4, 3)) * 3, 2.0)
    assert soft.shape == (4, 3) and np.allclose(soft.sum(axis=1), 1.0)
    packed = pack_targets(labels, soft)
    assert packed.shape == (4, 4) and np.array_equal(packed[:, 0], labels)
    for weight, t in ((0.5, 2.0), (1.0, 4.0), (0.2, 1.0)):
        got = np.asarray(distillation_loss(3, weight, t)(packed, logits))
        assert np.allclose(got, reference_loss(labels, soft, logits, weight, t), atol=1e-5)
    # With one-hot soft targets at T = 1 both terms are the plain cross-entropy.
    onehot = np.eye(3, dtype=np.float32)[labels]
    plain = -np.log(soft_targets(logits.astype(np.float64), 1.0))[np.arange(4), labels]
    got = np.asarray(distillation_loss(3, 0.7, 1.0)(pack_targets(labels, onehot), logits))
    assert np.allclose(got, plain, atol=1e-5)


def test_the_training_batches_carry_packed_targets_and_the_class_weights() -> None:
    x = np.zeros((6, 8, 8, 3), np.uint8)
    y = np.array([0, 0, 0, 0, 1, 1])
    soft = soft_targets(np.random.default_rng(1).normal(size=(6, 2)), 2.0)
    weights = class_weights(y, 2)
    ds = make_train_dataset(x, y, batch_size=6, seed=3, soft=soft, weights=weights)
    images, targets, sample_weights = next(iter(ds))
    targets, sample_weights = np.asarray(targets), np.asarray(sample_weights)
    assert images.shape == (6, 8, 8, 3) and targets.shape == (6, 3)
    order = targets[:, 0].astype(int)
    assert np.allclose(sample_weights, [weights[k] for k in order])  # 0.75 for the 4, 1.5 for the 2
    rows = {tuple(np.round(r, 5)) for r in pack_targets(y, soft)}
    assert {tuple(np.round(r, 5)) for r in targets} == rows  # every image once, its own soft targets


def test_a_student_learns_the_teachers_answers_and_the_bundle_says_so(folders: dict[str, Path]) -> None:
    data, teacher = folders["data"], folders["teacher"]
    root = folders["root"]
    labels_only = train_bundle(_config(data, root / "labels-only"))
    student = train_bundle(_config(data, root / "student", distill_from=teacher, distill_weight=1.0))
    # Trained on the labels the network ranks the selection images right after every
    # epoch; a student of the swapped teacher, on its answers alone, ranks them the
    # teacher's wrong way round once it has learnt from it (the epoch choice, on the
    # true labels, then keeps its first epoch: selection is not the teacher's).
    assert all(h["val_auc"] >= 0.8 for h in labels_only.metrics["training"]["history"])
    later = student.metrics["training"]["history"][1:]
    assert len(later) == 3 and all(h["val_auc"] <= 0.2 for h in later)
    assert student.metrics["training"]["best_epoch"] == 1
    d = student.metrics["training"]["distillation"]
    assert d["teacher"] == "toy 1" and d["teacher_tta"] == "flip-lr" and d["teacher_members"] == 1
    assert d["teacher_fit_auc"] <= 0.2 and d["weight"] == 1.0 and d["temperature"] == 2.0
    assert d["teacher_sha256"] == json.loads((teacher / "manifest.json").read_text())["model_sha256"]
    options = student.metrics["training"]["options"]
    assert options["distill_from"] == str(teacher) and options["distill_weight"] == 1.0
    assert "distillation" not in labels_only.metrics["training"]
    card = (root / "student" / "MODEL_CARD.md").read_text()
    assert "- Distilled from toy 1 (test-time views `flip-lr`" in card and "T = 2" in card
    # The student is an ordinary bundle of its own backbone: one network, its own views.
    runner = InferenceRunner(root / "student")
    x = np.random.default_rng(2).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    assert runner.predict_arrays(x).shape == (3, 2)
    assert student.metrics["training"]["parameters"] == labels_only.metrics["training"]["parameters"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 7}, r"not trained on this run's split: seed 42 \(this run 7\)"),
        ({"test_fraction": 0.2}, r"test_fraction 0.25 \(this run 0.2\)"),
        ({"image_size": 48}, "the teacher reads 32 px images, this run --image-size 48"),
    ],
)
def test_a_teacher_of_another_split_or_size_is_refused_before_training(
    folders: dict[str, Path], change: dict[str, object], message: str
) -> None:
    out = folders["root"] / "refused"
    config = _config(folders["data"], out, distill_from=folders["teacher"], **change)
    with pytest.raises(DatasetError, match=message):
        train_bundle(config)
    assert not out.exists()


def test_a_teacher_of_other_labels_or_other_images_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    three = _data(tmp_path / "three", benign=RED, adverse=BLUE)
    write_class_folder(three / "other", 12, (80, 200, 80), seed=3)
    (three / "dataset.json").write_text(json.dumps({"name": "toy", "labels": ["benign", "adverse", "other"]}))
    with pytest.raises(DatasetError, match=r"the teacher's labels \['benign', 'adverse'\] are not"):
        train_bundle(_config(three, tmp_path / "a", distill_from=folders["teacher"]))
    more = _data(tmp_path / "more", benign=RED, adverse=BLUE, n=16)
    with pytest.raises(DatasetError, match="the teacher's train split held .* images per class, this run's"):
        train_bundle(_config(more, tmp_path / "b", distill_from=folders["teacher"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"distill_weight": 0.0}, "--distill-weight must be above 0 and at most 1"),
        ({"distill_temperature": 0.5}, "--distill-temperature must be between 1 and 20"),
        ({"distill_from": Path("/nonexistent/bundle")}, "--distill-from: bundle folder /nonexistent/bundle does not"),
    ],
)
def test_bad_distillation_options_stop_before_anything_is_read(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    out = tmp_path / "never"
    with pytest.raises(DatasetError, match=message):
        train_bundle(_config(tmp_path / "no-data-needed", out, **change))
    assert not out.exists()


def test_the_command_line_carries_the_distillation_and_weight_decay_options() -> None:
    from diagnostics.ml.train import _parse

    config = _parse(
        ["--data", "d", "--out", "o", "--name", "n", "--version", "1", "--distill-from", "models/busi-small-cnn"]
        + ["--distill-weight", "0.7", "--distill-temperature", "4", "--weight-decay", "0.05"]
    )
    assert config.distill_from == Path("models/busi-small-cnn")
    assert (config.distill_weight, config.distill_temperature, config.weight_decay) == (0.7, 4.0, 0.05)
    plain = _parse(["--data", "d", "--out", "o", "--name", "n", "--version", "1"])
    assert plain.distill_from is None and plain.weight_decay == 1e-4  # the bundled models' value
