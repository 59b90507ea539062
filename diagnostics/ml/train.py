"""Train a classifier from image folders and write a model bundle.

    python -m diagnostics.ml.train --data DIR --out BUNDLE_DIR --name NAME --version V \\
        --epochs N --image-size S --seed 42 [--backbone small_cnn]

DIR holds one sub-folder per stage, or `train/` and `valid/` sub-folders that each hold
one sub-folder per stage (or pass --train-dir and --valid-dir). An optional
`DIR/dataset.json` gives the clinical order of the stages in its `labels` list.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import PIL  # noqa: E402

from . import drift  # noqa: E402
from . import metrics as M  # noqa: E402
from .augment import AUGMENTATIONS, COLOUR_AUGMENTATIONS, TTA_MODES, augment_batch, describe, views  # noqa: E402
from .bundle import Manifest, sha256_file, write_manifest  # noqa: E402
from .calibration import CALIBRATIONS, choose_calibration, fit_vector_scaling  # noqa: E402
from .calibration import probabilities as calibrated  # noqa: E402
from .card import MODEL_CARD, _pct, render_model_card  # noqa: E402
from .datasets import DatasetError, Split, _limit, load_split, resolve_layout, select_and_report  # noqa: E402
from .distill import (  # noqa: E402
    check_teacher,
    check_teacher_counts,
    distillation_loss,
    pack_targets,
    read_teacher,
    soft_targets,
    teacher_logits,
)
from .models import BACKBONES, INVARIANT_BACKBONES, SIZE_MULTIPLE, build_ensemble, build_model  # noqa: E402
from .preprocess import PREPROCESSING_ID  # noqa: E402

MODEL_FILE = "model.keras"
SCHEDULES = ("cosine", "plateau")
MAX_MEMBERS = 5


@dataclass
class TrainConfig:
    out: Path
    name: str
    version: str
    data: Path | None = None
    train_dir: Path | None = None
    valid_dir: Path | None = None
    task: str | None = None
    epochs: int = 30
    image_size: int = 96
    seed: int = 42
    backbone: str = "small_cnn"
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    lr_patience: int = 2
    schedule: str = "cosine"  # or "plateau"
    # Keras' default 0.99 needs hundreds of steps before the BatchNorm statistics used
    # at evaluation settle; a few hundred images give ~13 steps per epoch, so validation
    # scores stay at chance and the schedule cuts the learning rate for nothing.
    bn_momentum: float = 0.99
    # "dihedral" (flips, transposes): for patches without orientation, like histology.
    # "horizontal": left-right flips only, for images with an up (ultrasound: the
    # transducer is at the top, so a vertical flip makes an image no scanner produces).
    augmentation: str = "dihedral"
    # "hed" perturbs the haematoxylin/eosin/DAB stain amounts (histology); "hsv" jitters
    # hue and saturation; "none" leaves colour alone.
    colour_augmentation: str = "hsv"
    stain_sigma: float = 0.05
    # Test-time averaging of the logits over views ("dihedral8": the eight rotations and
    # reflections; "flip-lr"; "none"): part of the model, recorded in the manifest, and
    # applied by every inference and evaluation path.
    tta: str = "none"
    calibration: str = "temperature"  # or "vector" (calibration.py)
    # Networks trained with seeds seed, seed+1, ... and joined into one whose logits are
    # their mean (models.build_ensemble); 1 trains a single network.
    members: int = 1
    # Exponential moving average of the weights (decay per step; 0: off), scored and
    # kept instead of the last step's weights (_make_monitor).
    ema: float = 0.0
    # A trained bundle whose softened answers on the fit images the network also learns
    # from (distill.py), with the soft term's weight and temperature.
    distill_from: Path | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    valid_fraction: float = 0.2
    test_fraction: float = 0.0
    weights: Path | None = None
    uncertain_below: float = 0.6
    # Micrometres per pixel of the training patches: given, the bundle can run on whole
    # slides, with the slide method's default parameters (slides.SlideMethod).
    mpp: float | None = None
    # Selection-split images per class saved as the bundle's check_images/ (the bfloat16 check).
    check_images: int = 0
    limit_per_class: int | None = None
    verbose: int = 2
    # Other tasks' data folders for the out-of-distribution reference (ood_fit.py).
    ood_outliers: tuple[Path, ...] = ()


# ---------------------------------------------------------------------------- training


def _tf() -> Any:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def make_train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    augmentation: str = "dihedral",
    colour: str = "hsv",
    stain_sigma: float = 0.05,
    soft: np.ndarray | None = None,
    weights: dict[int, float] | None = None,
) -> Any:
    """Batches of augmented images and their labels; with `soft` (a teacher's soft
    targets, distill.py) the targets are packed rows (label, soft targets) and each
    batch carries its class weights as sample weights, since Keras' class_weight reads
    a class from a one-column target only."""
    tf = _tf()
    n = len(x)
    images = tf.constant(x)
    targets = tf.constant(y if soft is None else pack_targets(y, soft))
    per_image = None
    if soft is not None:
        if weights is None:
            raise ValueError("soft targets need the class weights, which then go in as sample weights")
        per_image = tf.constant(np.array([weights[int(k)] for k in y], np.float32))
    # Shuffle indices, not images: a shuffle buffer of images would copy the whole set.
    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def load(idx: Any, s: Any) -> Any:
        batch = tf.cast(tf.gather(images, idx), tf.float32)
        out = augment_batch(batch, s, augmentation, colour=colour, stain_sigma=stain_sigma)
        if per_image is not None:
            return out, tf.gather(targets, idx), tf.gather(per_image, idx)
        return out, tf.gather(targets, idx)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights n / (k * n_c), so every class contributes equally to the loss."""
    counts = np.bincount(y, minlength=n_classes)
    return {k: float(len(y) / (n_classes * counts[k])) for k in range(n_classes)}


def _make_monitor(
    x_val: np.ndarray, y_val: np.ndarray, *, patience: int, lr_patience: int | None, verbose: int, ema: float = 0.0
) -> Any:
    import keras

    class ValidationMonitor(keras.callbacks.Callback):  # type: ignore[misc]  # Keras ships no types
        """Scores the validation split once per epoch (AUC, NLL, accuracy), lowers the
        learning rate on a plateau, stops early and restores the best-AUC weights.
        One pass serves all three, instead of Keras' separate validation loop.

        With `ema` > 0 it also keeps an exponential moving average of every weight
        (BatchNorm statistics included) after each step, with the usual warm-up
        (decay min(ema, (1 + t) / (10 + t)) at step t), and scores and keeps the
        averaged weights instead of the last step's: Adam's steps stay about the
        learning rate in size for every weight, so the last step's weights wander from
        epoch to epoch even late in a schedule, and their average does not."""

        def __init__(self) -> None:
            super().__init__()
            self.best_auc = -math.inf
            self.best_epoch = -1
            self.best_weights: list[Any] | None = None
            self.wait = 0
            self.lr_wait = 0
            self.history: list[dict[str, float]] = []
            self.average: list[np.ndarray] | None = None
            self.steps = 0

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if not ema:
                return
            weights = self.model.get_weights()
            if self.average is None:
                self.average = [np.array(w, dtype=np.float64) for w in weights]
                return
            self.steps += 1
            d = min(ema, (1 + self.steps) / (10 + self.steps))
            for a, w in zip(self.average, weights, strict=True):
                a *= d
                a += (1.0 - d) * w

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs if logs is not None else {}
            live = None
            if self.average is not None:
                live = self.model.get_weights()
                self.model.set_weights([a.astype(w.dtype) for a, w in zip(self.average, live, strict=True)])
            logits = self.model.predict(x_val, batch_size=256, verbose=0)
            auc = M.roc_auc(y_val, M.softmax(logits))
            loss = M.nll_from_logits(y_val, logits)
            acc = M.accuracy(y_val, logits.argmax(axis=1))
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs.update(val_auc=auc, val_loss=loss, val_accuracy=acc)
            self.history.append(
                {
                    "epoch": epoch + 1,
                    "loss": float(logs.get("loss", math.nan)),
                    "val_loss": loss,
                    "val_auc": auc,
                    "val_accuracy": acc,
                    "learning_rate": lr,
                }
            )
            if auc > self.best_auc + 1e-4:
                self.best_auc, self.best_epoch = auc, epoch
                self.best_weights = self.model.get_weights()  # the averaged ones, with ema
                self.wait = self.lr_wait = 0
            else:
                self.wait += 1
                self.lr_wait += 1
                if lr_patience is not None and self.lr_wait >= lr_patience and lr > 1e-5:
                    self.model.optimizer.learning_rate.assign(lr * 0.3)
                    self.lr_wait = 0
                if self.wait >= patience:
                    self.model.stop_training = True
            if live is not None:
                self.model.set_weights(live)  # training goes on from the last step's weights
            if verbose:
                print(
                    f"epoch {epoch + 1}: val_auc={auc:.4f} val_loss={loss:.4f} "
                    f"val_acc={acc:.4f} lr={lr:.2e} best_epoch={self.best_epoch + 1}",
                    flush=True,
                )

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return ValidationMonitor()


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def check_config(config: TrainConfig) -> None:
    """Every option a run depends on, checked before any data is read or model built."""
    if config.colour_augmentation not in COLOUR_AUGMENTATIONS:
        raise DatasetError(
            f"unknown colour augmentation '{config.colour_augmentation}' (known: {', '.join(COLOUR_AUGMENTATIONS)})"
        )
    if not 0.0 <= config.stain_sigma <= 0.5:
        raise DatasetError("--stain-sigma must be between 0 and 0.5")
    if config.tta not in TTA_MODES:
        raise DatasetError(f"unknown test-time averaging '{config.tta}' (known: {', '.join(TTA_MODES)})")
    if config.tta == "dihedral8" and config.augmentation != "dihedral":
        raise DatasetError("--tta dihedral8 needs --augmentation dihedral (the model never saw rotated images)")
    if config.mpp is not None and not 0.01 <= config.mpp <= 100:
        raise DatasetError("--mpp (micrometres per pixel) must be between 0.01 and 100")
    if config.check_images < 0:
        raise DatasetError("--check-images must be 0 or more")
    if config.calibration not in CALIBRATIONS:
        raise DatasetError(f"unknown calibration '{config.calibration}' (known: {', '.join(CALIBRATIONS)})")
    if not 0.0 < config.bn_momentum < 1.0:
        raise DatasetError("--bn-momentum must be between 0 and 1")
    if not 0.0 <= config.weight_decay < 1.0:
        raise DatasetError("--weight-decay must be 0 or more and below 1")
    if not 0.0 <= config.ema < 1.0:
        raise DatasetError("--ema must be 0 (off) or a decay between 0 and 1, e.g. 0.999")
    if not 1 <= config.members <= MAX_MEMBERS:
        raise DatasetError(f"--members must be between 1 and {MAX_MEMBERS}")
    if config.schedule not in SCHEDULES:
        raise DatasetError(f"unknown schedule '{config.schedule}' (known: {', '.join(SCHEDULES)})")
    if config.backbone in INVARIANT_BACKBONES and config.tta != "none":
        raise DatasetError(
            f"--tta {config.tta} is pointless with --backbone {config.backbone}: the network already gives "
            "the same answer for every rotation and mirror image"
        )
    if not 0.0 < config.distill_weight <= 1.0:
        raise DatasetError("--distill-weight must be above 0 and at most 1 (1: the teacher's answers only)")
    if not 1.0 <= config.distill_temperature <= 20.0:
        raise DatasetError("--distill-temperature must be between 1 and 20")
    if config.distill_from is not None:
        read_teacher(config.distill_from)
    multiple = SIZE_MULTIPLE.get(config.backbone, 1)
    if config.image_size % multiple:
        raise DatasetError(f"--backbone {config.backbone} needs an --image-size divisible by {multiple}")


def predict_logits(model: Any, images: np.ndarray, tta: str, batch_size: int = 256) -> np.ndarray:
    """Logits averaged over the test-time views, as the runner computes them."""
    parts = [model.predict(v, batch_size=batch_size, verbose=0) for v in views(np, images, tta)]
    mean: np.ndarray = np.mean(np.stack(parts), axis=0).astype(np.float64)
    return mean


def _slide_method() -> dict[str, Any]:
    from dataclasses import asdict

    from .slides import SlideMethod

    return asdict(SlideMethod())


def _write_check_images(out: Path, split: Split, labels: list[str], per_class: int) -> None:
    """The first `per_class` images of each class of the split, as PNGs at the input size."""
    from PIL import Image

    from .runner import CHECK_IMAGES_DIR

    folder = out / CHECK_IMAGES_DIR
    folder.mkdir(exist_ok=True)
    for k, label in enumerate(labels):
        for i, row in enumerate(np.flatnonzero(split.labels == k)[:per_class]):
            Image.fromarray(split.images[row]).save(folder / f"{label}-{i}.png")


def report_with_intervals(
    y: np.ndarray,
    logits: np.ndarray,
    labels: list[str],
    *,
    temperature: float,
    calibration: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The report split's figures: every metric, 95 % bootstrap intervals and the
    reliability diagram's points, on the calibrated probabilities."""
    probs = calibrated(logits, temperature=temperature, calibration=calibration)
    out = M.classification_report(y, logits, labels, temperature=temperature, scaled=probs)
    out["ci95"] = M.bootstrap_intervals(y, probs, seed=seed)
    out["ci95_method"] = M.BOOTSTRAP_METHOD
    out["reliability"] = M.reliability_bins(y, probs)
    return out


def _fit_member(
    config: TrainConfig,
    seed: int,
    train: Split,
    select: Split,
    weights: dict[int, float],
    n_labels: int,
    soft: np.ndarray | None = None,
) -> tuple[Any, Any, float]:
    """Train one network with `seed` (on the labels and, given `soft`, a teacher's soft
    targets); returns it with the best selection-AUC weights restored, its monitor
    (history, best epoch) and its training seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(config.backbone, config.image_size, n_labels, weights=config.weights)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
    learning_rate: Any = config.learning_rate
    if config.schedule == "cosine":
        steps = config.epochs * math.ceil(len(train.labels) / config.batch_size)
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay),
        loss=(
            keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            if soft is None
            else distillation_loss(n_labels, config.distill_weight, config.distill_temperature)
        ),
    )
    dataset = make_train_dataset(
        train.images,
        train.labels,
        batch_size=config.batch_size,
        seed=seed,
        augmentation=config.augmentation,
        colour=config.colour_augmentation,
        stain_sigma=config.stain_sigma,
        soft=soft,
        weights=weights,
    )
    monitor = _make_monitor(
        select.images,
        select.labels,
        patience=config.patience,
        lr_patience=config.lr_patience if config.schedule == "plateau" else None,
        verbose=config.verbose,
        ema=config.ema,
    )
    started = time.monotonic()
    model.fit(
        dataset,
        epochs=config.epochs,
        class_weight=weights if soft is None else None,  # else in the dataset, as sample weights
        callbacks=[monitor],
        shuffle=False,  # the dataset shuffles itself, reproducibly
        verbose=config.verbose,
    )
    return model, monitor, time.monotonic() - started


def _fresh_copy(config: TrainConfig, members: list[Any], n_labels: int) -> Any:
    """The network to save: freshly built and never compiled, with the trained weights
    (Keras 3 saves a compiled model's optimizer state in the .keras file whatever
    include_optimizer says; this copy is about a third of the size)."""
    copies = []
    for member in members:
        copy = build_model(config.backbone, config.image_size, n_labels, weights=None)
        copy.set_weights(member.get_weights())
        copies.append(copy)
    return copies[0] if len(copies) == 1 else build_ensemble(copies)


def _member_summary(trained: tuple[Any, Any, float, int]) -> dict[str, Any]:
    _, monitor, seconds, seed = trained
    return {
        "seed": seed,
        "epochs_run": len(monitor.history),
        "best_epoch": monitor.best_epoch + 1,
        "best_val_auc_during_training": monitor.best_auc,
        "training_seconds": round(seconds, 1),
        "history": monitor.history,
    }


def train_bundle(config: TrainConfig) -> Manifest:
    """Train, calibrate, evaluate and write the bundle; returns its manifest."""
    started = time.monotonic()
    if config.epochs < 1:
        raise DatasetError("--epochs must be at least 1")
    if config.image_size < 8:
        raise DatasetError("--image-size must be at least 8 pixels")
    if config.augmentation not in AUGMENTATIONS:
        raise DatasetError(f"unknown augmentation '{config.augmentation}' (known: {', '.join(AUGMENTATIONS)})")
    if config.backbone not in BACKBONES:
        raise DatasetError(f"unknown backbone '{config.backbone}' (known: {sorted(BACKBONES)})")
    check_config(config)
    layout = resolve_layout(
        data=config.data,
        train_dir=config.train_dir,
        valid_dir=config.valid_dir,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
        test_fraction=config.test_fraction,
    )
    if config.weights is not None and not Path(config.weights).is_file():
        raise DatasetError(f"weights file {config.weights} does not exist")
    labels = layout.labels
    teacher = None
    if config.distill_from is not None:
        teacher = read_teacher(config.distill_from)
        check_teacher(
            teacher,
            labels=labels,
            image_size=config.image_size,
            seed=config.seed,
            valid_fraction=config.valid_fraction,
            test_fraction=config.test_fraction,
        )
    train_files = _limit(layout.train_files, config.limit_per_class, config.seed)
    valid_files = _limit(layout.valid_files, config.limit_per_class, config.seed + 1)
    size = config.image_size
    train = load_split(train_files, labels, size, where="training")
    valid = load_split(valid_files, labels, size, where="validation")
    test = load_split(layout.test_files, labels, size, where="test") if layout.test_files else None
    # Three disjoint roles: fit (training split), select (epoch choice, calibration) and
    # report (the card's figures). Without a test split the validation split is halved.
    select, report_split, roles = select_and_report(valid, test, seed=config.seed, labels=labels)
    roles = {"fit": f"training split ({len(train.labels)} images)", **roles}
    load_seconds = time.monotonic() - started
    if config.verbose:
        print(
            f"loaded {len(train.labels)} training and {len(valid.labels)} validation images "
            f"({train.unreadable + valid.unreadable} unreadable) in {load_seconds:.1f} s",
            flush=True,
        )

    import keras

    _tf()  # quiet TensorFlow's Python logger before the first graph is built
    weights = class_weights(train.labels, len(labels))
    soft = None
    distillation: dict[str, Any] = {}
    if teacher is not None and config.distill_from is not None:
        check_teacher_counts(
            teacher, {"train": train.counts, "valid": valid.counts, **({"test": test.counts} if test else {})}
        )
        teacher_started = time.monotonic()
        t_logits = teacher_logits(config.distill_from, train.images)
        soft = soft_targets(t_logits, config.distill_temperature)
        distillation = {
            "teacher": f"{teacher.name} {teacher.version}",
            "teacher_sha256": teacher.model_sha256,
            "teacher_tta": teacher.tta,
            "teacher_parameters": teacher.metrics.get("training", {}).get("parameters"),
            "teacher_members": len(teacher.metrics.get("training", {}).get("members", [])) or 1,
            "teacher_fit_auc": M.roc_auc(train.labels, M.softmax(t_logits)),
            "weight": config.distill_weight,
            "temperature": config.distill_temperature,
            "targets": "the teacher's logits averaged over its test-time views, on the unaugmented fit images",
            "teacher_seconds": round(time.monotonic() - teacher_started, 1),
        }
        if config.verbose:
            print(
                f"teacher {distillation['teacher']}: soft targets for {len(soft)} fit images in "
                f"{distillation['teacher_seconds']} s (its AUC on them {distillation['teacher_fit_auc']:.4f})",
                flush=True,
            )
    schedule_text = (
        f"cosine decay over {config.epochs} epochs to 2 % of the initial rate"
        if config.schedule == "cosine"
        else f"lr x0.3 after {config.lr_patience} epochs without val AUC gain"
    )
    if config.ema:
        schedule_text += f"; exponential moving average of the weights (decay {config.ema:g} per step) scored and kept"
    schedule_text += f"; early stop after {config.patience} epochs without gain; best-val-AUC weights restored"
    # Members train one after another on the same fit split, each with its own seed
    # (initial weights, batch order, augmentation) and its own epoch choice on the
    # selection split; the split itself follows config.seed alone.
    trained: list[tuple[Any, Any, float, int]] = []
    for i in range(config.members):
        member_seed = config.seed + i
        if config.verbose and config.members > 1:
            print(f"member {i + 1} of {config.members}, seed {member_seed}", flush=True)
        member, member_monitor, seconds = _fit_member(config, member_seed, train, select, weights, len(labels), soft)
        trained.append((member, member_monitor, seconds, member_seed))
    fit_seconds = sum(t[2] for t in trained)
    model = trained[0][0] if config.members == 1 else build_ensemble([t[0] for t in trained])

    # Calibrate on the selection split's logits of the restored best weights (averaged
    # over the test-time views when the bundle uses them); the report split took no part
    # in training, epoch choice or calibration.
    logits = predict_logits(model, select.images, config.tta)
    calibration: dict[str, Any] = {}
    method: str = config.calibration
    cv_nll: dict[str, float] = {}
    if method == "auto":
        method, cv_nll = choose_calibration(select.labels, logits, seed=config.seed)
    if method == "vector":
        calibration = {**fit_vector_scaling(select.labels, logits), "fitted_on": "select"}
        temperature = 1.0
    else:
        temperature = M.fit_temperature(select.labels, logits)
        if cv_nll:
            calibration = {"method": "temperature", "fitted_on": "select"}
    if cv_nll:
        calibration["chosen_by"] = {"rule": "lower 5-fold cross-validated NLL on the selection split", **cv_nll}
    select_probs = calibrated(logits, temperature=temperature, calibration=calibration)
    select_report = M.classification_report(select.labels, logits, labels, temperature=temperature, scaled=select_probs)
    report_logits = predict_logits(model, report_split.images, config.tta)
    report = report_with_intervals(
        report_split.labels, report_logits, labels, temperature=temperature, calibration=calibration, seed=config.seed
    )

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    # Keras 3 ignores include_optimizer for the .keras format (and clone_model compiles the
    # clone), so save a freshly built, never-compiled copy: weights and architecture only,
    # about a third of the size with the optimizer state.
    export = _fresh_copy(config, [t[0] for t in trained], len(labels))
    tmp_path = out / ("tmp-" + MODEL_FILE)
    export.save(tmp_path)
    reloaded = keras.saving.load_model(tmp_path, compile=False)
    probe = select.images[:8].astype(np.float32)
    diff = float(np.max(np.abs(np.asarray(reloaded(probe, training=False)) - np.asarray(model(probe, training=False)))))
    if diff > 1e-3:
        raise RuntimeError(f"saved model disagrees with the trained one (max diff {diff})")
    tmp_path.replace(model_path)

    monitor = trained[0][1]
    history = monitor.history
    manifest = Manifest(
        name=config.name,
        version=config.version,
        task=config.task or str(layout.dataset_info.get("task") or config.name),
        labels=list(labels),
        input_size=size,
        preprocessing=PREPROCESSING_ID,
        temperature=temperature,
        uncertain_below=config.uncertain_below,
        metrics={
            "split": "report",
            "roles": roles,
            "report": report,
            "select": select_report,
            "calibration_fitted_on": "select",
            "training": {
                "backbone": config.backbone,
                **({"architecture": INVARIANT_BACKBONES[b]} if (b := config.backbone) in INVARIANT_BACKBONES else {}),
                "initial_weights": str(config.weights) if config.weights else "random (trained from scratch)",
                "parameters": int(model.count_params()),
                "epochs_requested": config.epochs,
                "epochs_run": len(history),
                "best_epoch": monitor.best_epoch + 1,
                "best_val_auc_during_training": monitor.best_auc,
                **({"members": [_member_summary(t) for t in trained]} if config.members > 1 else {}),
                **({"distillation": distillation} if distillation else {}),
                "batch_size": config.batch_size,
                "batchnorm_momentum": config.bn_momentum,
                "optimizer": f"AdamW lr {config.learning_rate:g} weight decay {config.weight_decay:g}",
                "schedule": schedule_text,
                "class_weights": {labels[k]: w for k, w in weights.items()},
                "augmentation": describe(config.augmentation, config.colour_augmentation, config.stain_sigma),
                "options": {
                    "augmentation": config.augmentation,
                    "colour_augmentation": config.colour_augmentation,
                    "stain_sigma": config.stain_sigma,
                    "tta": config.tta,
                    "calibration": config.calibration,
                    "members": config.members,
                    "ema": config.ema,
                    **(
                        {
                            "distill_from": str(config.distill_from),
                            "distill_weight": config.distill_weight,
                            "distill_temperature": config.distill_temperature,
                        }
                        if config.distill_from is not None
                        else {}
                    ),
                    "schedule": config.schedule,
                    "epochs": config.epochs,
                    "learning_rate": config.learning_rate,
                    "weight_decay": config.weight_decay,
                    "valid_fraction": config.valid_fraction,
                    "test_fraction": config.test_fraction,
                },
                "seed": config.seed,
                "load_seconds": round(load_seconds, 1),
                "training_seconds": round(fit_seconds, 1),
                "total_seconds": round(time.monotonic() - started, 1),
                "cpu_count": os.cpu_count(),
                "history": history,
            },
        },
        data_summary={
            "dataset_name": layout.dataset_info.get("name"),
            "source": layout.dataset_info.get("source"),
            "license": layout.dataset_info.get("license"),
            "label_order_source": layout.label_order_source,
            "split_method": layout.split_method,
            "splits": {"train": train.counts, "valid": valid.counts, **({"test": test.counts} if test else {})},
            "unreadable_skipped": {
                "train": train.unreadable,
                "valid": valid.unreadable,
                **({"test": test.unreadable} if test else {}),
            },
            "ignored_non_image_files": layout.ignored_non_image,
            "limit_per_class": config.limit_per_class,
        },
        model_file=MODEL_FILE,
        model_sha256=sha256_file(model_path),
        library_versions=library_versions(),
        # What the validation images and the calibrated answers on them looked like:
        # the reference a deployed version's drift check compares its inputs with.
        drift_reference=drift.reference_stats(select.images, select_probs, labels),
        tta=config.tta,
        calibration=calibration,
        mpp=config.mpp,
        slide_method=_slide_method() if config.mpp is not None else {},
    )
    write_manifest(out, manifest)
    if config.check_images:
        _write_check_images(out, select, labels, config.check_images)
    (out / MODEL_CARD).write_text(render_model_card(manifest), encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------- CLI


def _parse(argv: Sequence[str] | None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m diagnostics.ml.train", description=__doc__)
    p.add_argument("--data", type=Path)
    p.add_argument("--train-dir", type=Path)
    p.add_argument("--valid-dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--task")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--backbone", default="small_cnn", choices=sorted(BACKBONES))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument(
        "--weight-decay",
        type=float,
        default=1e-4,
        help="AdamW's decoupled weight decay (each step shrinks every weight by learning rate x this)",
    )
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--lr-patience", type=int, default=2, help="epochs without val AUC gain before lr x0.3")
    p.add_argument("--augmentation", choices=AUGMENTATIONS, default="dihedral")
    p.add_argument(
        "--colour-augmentation",
        choices=COLOUR_AUGMENTATIONS,
        default="hsv",
        help="hed: stain amounts in haematoxylin-eosin-DAB space (histology); hsv: hue and saturation",
    )
    p.add_argument("--stain-sigma", type=float, default=0.05, help="HED jitter: scale 1 +- s, shift +- s")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time view averaging")
    p.add_argument("--calibration", choices=CALIBRATIONS, default="temperature")
    p.add_argument("--members", type=int, default=1, help="ensemble: networks trained with seeds seed, seed+1, ...")
    p.add_argument("--ema", type=float, default=0.0, help="keep an exponential moving average of the weights (decay)")
    p.add_argument(
        "--distill-from",
        type=Path,
        help="a trained bundle (e.g. an ensemble) whose softened answers on the fit images the network learns from too",
    )
    p.add_argument("--distill-weight", type=float, default=0.5, help="weight of the teacher's soft targets (0..1]")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="softening temperature T of both sides")
    p.add_argument("--bn-momentum", type=float, default=0.99, help="BatchNorm momentum; ~0.9 for small data sets")
    p.add_argument("--valid-fraction", type=float, default=0.2)
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="hold out this fraction per class as a test split (only when splitting one folder)",
    )
    p.add_argument("--weights", type=Path, help="local weights file (.weights.h5) to start from; nothing is downloaded")
    p.add_argument("--uncertain-below", type=float, default=0.6)
    p.add_argument("--mpp", type=float, help="micrometres per pixel of the images: the bundle can then read slides")
    p.add_argument("--check-images", type=int, default=0, help="selection images per class kept for the bfloat16 check")
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class per split (smoke)")
    p.add_argument(
        "--ood-outliers",
        type=Path,
        nargs="*",
        default=[],
        help="other tasks' data folders: outliers the out-of-distribution threshold is judged against",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1 if sys.stdout.isatty() else 2,
        help="0 quiet, 1 progress bar (default on a terminal), 2 one line per epoch",
    )
    a = p.parse_args(argv)
    return TrainConfig(
        out=a.out,
        name=a.name,
        version=a.version,
        data=a.data,
        train_dir=a.train_dir,
        valid_dir=a.valid_dir,
        task=a.task,
        epochs=a.epochs,
        image_size=a.image_size,
        seed=a.seed,
        backbone=a.backbone,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        weight_decay=a.weight_decay,
        patience=a.patience,
        schedule=a.schedule,
        lr_patience=a.lr_patience,
        bn_momentum=a.bn_momentum,
        augmentation=a.augmentation,
        colour_augmentation=a.colour_augmentation,
        stain_sigma=a.stain_sigma,
        tta=a.tta,
        calibration=a.calibration,
        members=a.members,
        ema=a.ema,
        distill_from=a.distill_from,
        distill_weight=a.distill_weight,
        distill_temperature=a.distill_temperature,
        valid_fraction=a.valid_fraction,
        test_fraction=a.test_fraction,
        weights=a.weights,
        uncertain_below=a.uncertain_below,
        mpp=a.mpp,
        check_images=a.check_images,
        limit_per_class=a.limit_per_class,
        verbose=a.verbose,
        ood_outliers=tuple(a.ood_outliers),
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = _parse(argv)
    try:
        manifest = train_bundle(config)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if config.data is not None:
        # The out-of-distribution reference, on the same split (ood_fit.py); rewrites the card.
        from .ood_fit import fit_bundle

        section = fit_bundle(
            bundle=config.out,
            data=config.data,
            outliers=config.ood_outliers,
            valid_fraction=config.valid_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
            fit_limit=6000,
            outlier_limit=2000,
            limit_per_class=config.limit_per_class,
        )
        me = section["measured"]
        print(
            f"out-of-distribution reference: own {_pct(me['own_report_flagged'])} flagged, "
            f"other tasks {_pct(me['other_report_flagged'])}, synthetic {_pct(me['synthetic_report_flagged'])}"
        )
    v = manifest.metrics["report"]
    ci = v["ci95"]
    print(
        f"wrote {config.out}; report split, {manifest.metrics['roles']['report']}: "
        f"accuracy {v['accuracy']:.4f} ({ci['accuracy'][0]:.3f}-{ci['accuracy'][1]:.3f}), "
        f"balanced {v['balanced_accuracy']:.4f}, "
        f"AUC {v['roc_auc']:.4f} ({ci['roc_auc'][0]:.3f}-{ci['roc_auc'][1]:.3f}), "
        f"ECE {v['ece_before_temperature']:.4f} -> {v['ece_after_temperature']:.4f} "
        f"({manifest.calibration.get('method', 'temperature')})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
