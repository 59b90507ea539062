"""Knowledge distillation (Hinton, Vinyals and Dean, 2015): a student network learns
from a trained teacher bundle's softened answers as well as from the labels.

The teacher is a bundle (an ensemble, or a network with test-time views): its logits,
averaged over its own views exactly as the runner computes them, are taken once on the
unaugmented fit images and softened with a temperature T. The student's loss is

    (1 - a) * CE(label, z) + a * T^2 * CE(softmax(z_teacher / T), z / T)

(T^2 keeps the soft term's gradients the size of the hard term's). The targets are
computed once, not on every augmented batch: a teacher averaged over the eight
dihedral views (or the left-right pair) gives the same answer for each flipped or
rotated copy the augmentation makes, and the stain jitter is small.

The teacher must have been fitted on this run's fit split and nothing else, and have
chosen its epochs on the same selection split: otherwise its answers would carry what
it learned from the selection or report images into the student. `check_teacher`
refuses a teacher whose split (seed, fractions, per-class counts) differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .bundle import BundleError, Manifest, read_manifest
from .datasets import DatasetError
from .preprocess import PREPROCESSING_ID

TEACHER_BATCH = 256


def read_teacher(folder: Path) -> Manifest:
    """The teacher bundle's manifest, or a DatasetError saying why it cannot teach."""
    if not Path(folder).is_dir():
        raise DatasetError(f"--distill-from: bundle folder {folder} does not exist")
    try:
        teacher = read_manifest(folder)
    except BundleError as exc:
        raise DatasetError(f"--distill-from: {exc}") from exc
    if teacher.preprocessing != PREPROCESSING_ID:
        raise DatasetError(
            f"--distill-from: the teacher's preprocessing '{teacher.preprocessing}' is not this version's "
            f"'{PREPROCESSING_ID}'"
        )
    return teacher


def check_teacher(
    teacher: Manifest,
    *,
    labels: list[str],
    image_size: int,
    seed: int,
    valid_fraction: float,
    test_fraction: float,
) -> None:
    """Refuses a teacher with other labels, another input size or another split; the
    per-class counts are compared by `check_teacher_counts` once the images are read."""
    if list(teacher.labels) != list(labels):
        raise DatasetError(
            f"--distill-from: the teacher's labels {list(teacher.labels)} are not this data's {list(labels)}"
        )
    if teacher.input_size != image_size:
        raise DatasetError(
            f"--distill-from: the teacher reads {teacher.input_size} px images, this run --image-size {image_size}"
        )
    training = teacher.metrics.get("training", {})
    options = training.get("options", {})
    recorded = {
        "seed": training.get("seed"),
        "valid_fraction": options.get("valid_fraction"),
        "test_fraction": options.get("test_fraction"),
    }
    wanted = {"seed": seed, "valid_fraction": valid_fraction, "test_fraction": test_fraction}
    differ = [f"{k} {recorded[k]} (this run {v})" for k, v in wanted.items() if recorded[k] != v]
    if differ:
        raise DatasetError(
            "--distill-from: the teacher was not trained on this run's split: "
            + ", ".join(differ)
            + "; its answers would carry what it learned from this run's selection or report images"
        )


def check_teacher_counts(teacher: Manifest, splits: dict[str, dict[str, int]]) -> None:
    """The teacher's recorded images per class and split must be this run's."""
    recorded = teacher.data_summary.get("splits", {})
    for name, counts in splits.items():
        if recorded.get(name) != counts:
            raise DatasetError(
                f"--distill-from: the teacher's {name} split held {recorded.get(name)} images per class, "
                f"this run's {counts}: it was trained on other data or another split"
            )


def teacher_logits(folder: Path, images: np.ndarray) -> np.ndarray:
    """The teacher's logits, averaged over its test-time views (its runner's bare call)."""
    from .runner import InferenceRunner

    try:
        runner = InferenceRunner(folder)
    except BundleError as exc:
        raise DatasetError(f"--distill-from: {exc}") from exc
    parts = [runner.bare_call(images[i : i + TEACHER_BATCH]) for i in range(0, len(images), TEACHER_BATCH)]
    return np.concatenate(parts).astype(np.float64)


def soft_targets(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), as float32 rows that sum to one."""
    out: np.ndarray = M.softmax(logits, temperature).astype(np.float32)
    return out


def pack_targets(labels: np.ndarray, soft: np.ndarray) -> np.ndarray:
    """One target row per image: the label (as a float) followed by the soft targets,
    so Keras passes both to the loss through its one `y`."""
    return np.concatenate([labels.astype(np.float32)[:, None], soft.astype(np.float32)], axis=1)


def distillation_loss(n_classes: int, weight: float, temperature: float) -> Any:
    """The Keras loss over packed targets (`pack_targets`) and the student's logits."""
    from keras import ops

    t = float(temperature)

    def loss(y_true: Any, logits: Any) -> Any:
        hard = ops.cast(y_true[:, 0], "int32")
        soft = y_true[:, 1 : 1 + n_classes]
        log_p = ops.log_softmax(logits, axis=-1)
        ce_hard = -ops.sum(ops.one_hot(hard, n_classes) * log_p, axis=-1)
        ce_soft = -ops.sum(soft * ops.log_softmax(logits / t, axis=-1), axis=-1)
        return (1.0 - weight) * ce_hard + weight * (t * t) * ce_soft

    return loss
