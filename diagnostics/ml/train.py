"""Train a classifier from image folders and write a model bundle.

    python -m diagnostics.ml.train --data DIR --out BUNDLE_DIR --name NAME --version V \\
        --epochs N --image-size S --seed 42 [--backbone small_cnn]

DIR holds one sub-folder per stage, or `train/` and `valid/` sub-folders that each hold
one sub-folder per stage (or pass --train-dir and --valid-dir). An optional
`DIR/dataset.json` gives the clinical order of the stages in its `labels` list.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import PIL  # noqa: E402

from . import drift  # noqa: E402
from . import metrics as M  # noqa: E402
from .bundle import Manifest, sha256_file, write_manifest  # noqa: E402
from .models import BACKBONES, build_model  # noqa: E402
from .preprocess import IMAGE_SUFFIXES, PREPROCESSING_ID, ImageDecodeError, decode_rgb  # noqa: E402

DATASET_JSON = "dataset.json"
MODEL_FILE = "model.keras"
MODEL_CARD = "MODEL_CARD.md"
SCHEDULES = ("cosine", "plateau")


class DatasetError(ValueError):
    """The training folders cannot be used; the message says why in plain words."""


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
    valid_fraction: float = 0.2
    test_fraction: float = 0.0
    weights: Path | None = None
    uncertain_below: float = 0.6
    limit_per_class: int | None = None
    verbose: int = 2


@dataclass
class Split:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    counts: dict[str, int]
    unreadable: int


@dataclass
class Layout:
    labels: list[str]
    train_files: dict[str, list[Path]]
    valid_files: dict[str, list[Path]]
    split_method: str
    label_order_source: str
    ignored_non_image: int
    dataset_info: dict[str, Any] = field(default_factory=dict)
    # Held out from training, model selection and calibration; empty when not asked for.
    test_files: dict[str, list[Path]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- folders


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetError(f"folder {split_dir} does not exist")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _image_files(folder: Path) -> tuple[list[Path], int]:
    files, ignored = [], 0
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        else:
            ignored += 1
    return files, ignored


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    labels = info.get("labels") if isinstance(info, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DatasetError(f"{path} must contain a 'labels' list of stage names")
    if len(set(labels)) != len(labels):
        raise DatasetError(f"{path} lists a stage more than once in 'labels'")
    return dict(info)


def _ordered_labels(
    folders: list[str], where: Path, dataset_json: Path | None
) -> tuple[list[str], str, dict[str, Any]]:
    if len(folders) == 0:
        raise DatasetError(f"{where} has no class sub-folders (one folder per stage expected)")
    if len(folders) == 1:
        raise DatasetError(f"{where} has only one class folder ('{folders[0]}'): training needs at least two")
    if dataset_json is None or not dataset_json.is_file():
        return folders, "alphabetical folder order (no dataset.json)", {}
    info = _read_dataset_json(dataset_json)
    labels: list[str] = info["labels"]
    if set(labels) != set(folders):
        missing = sorted(set(labels) - set(folders))
        extra = sorted(set(folders) - set(labels))
        parts = []
        if missing:
            parts.append(f"labels without a folder: {', '.join(missing)}")
        if extra:
            parts.append(f"folders not in dataset.json: {', '.join(extra)}")
        raise DatasetError(
            f"{dataset_json} labels {labels} do not match the class folders {folders} in "
            f"{where} ({'; '.join(parts)}); folder names must equal the labels exactly"
        )
    return list(labels), "dataset.json", info


def _collect(split_dir: Path, labels: list[str]) -> tuple[dict[str, list[Path]], int]:
    files: dict[str, list[Path]] = {}
    ignored = 0
    for label in labels:
        found, skipped = _image_files(split_dir / label)
        ignored += skipped
        if not found:
            raise DatasetError(f"class folder '{label}' in {split_dir} contains no images")
        files[label] = found
    return files, ignored


def _stratified_split(
    files: dict[str, list[Path]], fraction: float, seed: int, test_fraction: float = 0.0
) -> tuple[dict[str, list[Path]], dict[str, list[Path]], dict[str, list[Path]]]:
    """Per class: shuffle with `seed`, then cut test, validation and training parts, so
    every split keeps the class proportions and the same seed gives the same split."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError("the validation fraction must be between 0 and 1")
    if not 0.0 <= test_fraction < 1.0 or fraction + test_fraction >= 1.0:
        raise DatasetError("the test fraction must be at least 0 and, with the validation fraction, below 1")
    need = 3 if test_fraction > 0 else 2
    rng = np.random.default_rng(seed)
    train, valid, test = {}, {}, {}
    for label, paths in files.items():
        if len(paths) < need:
            raise DatasetError(
                f"class '{label}' has {len(paths)} image(s); at least {need} are needed to keep one "
                "for validation" + (" and one for testing" if need == 3 else "")
            )
        order = rng.permutation(len(paths))
        n_test = min(len(paths) - 2, max(1, round(len(paths) * test_fraction))) if test_fraction > 0 else 0
        n_valid = min(len(paths) - n_test - 1, max(1, round(len(paths) * fraction)))
        if n_test:
            test[label] = sorted(paths[i] for i in order[:n_test])
        valid[label] = sorted(paths[i] for i in order[n_test : n_test + n_valid])
        train[label] = sorted(paths[i] for i in order[n_test + n_valid :])
    return train, valid, test


def resolve_layout(
    *,
    data: Path | None,
    train_dir: Path | None,
    valid_dir: Path | None,
    valid_fraction: float,
    seed: int,
    test_fraction: float = 0.0,
) -> Layout:
    """Find the class folders, their clinical order and the train/valid file lists."""
    if (train_dir is None) != (valid_dir is None):
        raise DatasetError("--train-dir and --valid-dir must be given together")
    if data is None and train_dir is None:
        raise DatasetError("give --data, or --train-dir and --valid-dir")
    if data is not None and not data.is_dir():
        raise DatasetError(f"data folder {data} does not exist")

    if train_dir is None and data is not None:
        if (data / "train").is_dir() and (data / "valid").is_dir():
            train_dir, valid_dir = data / "train", data / "valid"
    dataset_json = None
    if data is not None:
        dataset_json = data / DATASET_JSON
    elif train_dir is not None:
        dataset_json = train_dir / DATASET_JSON

    if train_dir is not None and valid_dir is not None:
        if test_fraction > 0:
            raise DatasetError(
                "--test-fraction splits one folder; it cannot be combined with given train/valid folders"
            )
        folders = _class_folders(train_dir)
        labels, order_source, info = _ordered_labels(folders, train_dir, dataset_json)
        valid_folders = _class_folders(valid_dir)
        if set(valid_folders) != set(labels):
            raise DatasetError(
                f"the validation folder {valid_dir} has class folders {valid_folders}, "
                f"but the training folder has {sorted(labels)}: they must be the same"
            )
        train_files, ignored_t = _collect(train_dir, labels)
        valid_files, ignored_v = _collect(valid_dir, labels)
        return Layout(
            labels,
            train_files,
            valid_files,
            "given train/valid folders",
            order_source,
            ignored_t + ignored_v,
            info,
        )

    assert data is not None
    folders = _class_folders(data)
    labels, order_source, info = _ordered_labels(folders, data, dataset_json)
    files, ignored = _collect(data, labels)
    train_files, valid_files, test_files = _stratified_split(files, valid_fraction, seed, test_fraction)
    method = f"stratified random split, {valid_fraction:.0%} validation"
    if test_fraction > 0:
        method += f", {test_fraction:.0%} test"
    return Layout(
        labels,
        train_files,
        valid_files,
        f"{method}, seed {seed}",
        order_source,
        ignored,
        info,
        test_files,
    )


def _limit(files: dict[str, list[Path]], limit: int | None, seed: int) -> dict[str, list[Path]]:
    if limit is None:
        return files
    rng = np.random.default_rng(seed)
    out = {}
    for label, paths in files.items():
        if len(paths) > limit:
            keep = rng.choice(len(paths), size=limit, replace=False)
            paths = sorted(paths[i] for i in keep)
        out[label] = paths
    return out


def _decode_file(path: Path, size: int) -> np.ndarray | None:
    try:
        return decode_rgb(path.read_bytes(), size=size)
    except (ImageDecodeError, OSError):
        return None


def load_split(files: dict[str, list[Path]], labels: list[str], size: int, *, where: str) -> Split:
    """Decode every image into memory; unreadable files are skipped and counted."""
    paths = [p for label in labels for p in files[label]]
    targets = [k for k, label in enumerate(labels) for _ in files[label]]
    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(pool.map(lambda p: _decode_file(p, size), paths))
    keep = [i for i, arr in enumerate(decoded) if arr is not None]
    images = np.zeros((len(keep), size, size, 3), dtype=np.uint8)
    for j, i in enumerate(keep):
        images[j] = decoded[i]  # type: ignore[assignment]  # keep holds only decoded (non-None) images
    y = np.asarray([targets[i] for i in keep], dtype=np.int64)
    counts = {label: int((y == k).sum()) for k, label in enumerate(labels)}
    for label, n in counts.items():
        if n == 0:
            raise DatasetError(f"class '{label}' has no readable images in the {where} split")
    return Split(images, y, counts, len(paths) - len(keep))


# ---------------------------------------------------------------------------- training


def _tf() -> Any:
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


AUGMENTATIONS = ("dihedral", "horizontal")


def augment_batch(images: Any, seed: Any, mode: str = "dihedral") -> Any:
    """Random flips (all dihedral transforms, or left-right only for images with an up),
    zoom-in up to 10 %, brightness/contrast jitter and a small hue/saturation shift on a
    float batch in 0..255. Stateless ops keyed by `seed` make the augmentation
    reproducible. Images must be square."""
    tf = _tf()
    seeds = tf.random.split(seed, num=7)
    batch = tf.shape(images)[0]
    size = images.shape[1]

    def maybe(x: Any, fn: Any, s: Any) -> Any:
        mask = tf.random.stateless_uniform([batch, 1, 1, 1], s) < 0.5
        return tf.where(mask, fn(x), x)

    if mode == "dihedral":
        # Transpose and the two flips generate all eight rotations/reflections.
        x = maybe(images, lambda t: tf.transpose(t, [0, 2, 1, 3]), seeds[0])
        x = maybe(x, lambda t: tf.reverse(t, [2]), seeds[1])
        x = maybe(x, lambda t: tf.reverse(t, [1]), seeds[2])
    else:
        x = maybe(images, lambda t: tf.reverse(t, [2]), seeds[1])
    scale = tf.random.stateless_uniform([batch], seeds[3], 0.9, 1.0)
    offset = tf.random.stateless_uniform([batch, 2], seeds[4]) * (1.0 - scale)[:, None]
    boxes = tf.stack([offset[:, 0], offset[:, 1], offset[:, 0] + scale, offset[:, 1] + scale], axis=1)
    x = tf.image.crop_and_resize(x, boxes, tf.range(batch), [size, size])
    jitter = tf.random.stateless_uniform([batch, 2], seeds[5], -1.0, 1.0)
    brightness = (jitter[:, 0] * 0.1 * 255.0)[:, None, None, None]
    contrast = (1.0 + jitter[:, 1] * 0.15)[:, None, None, None]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = tf.clip_by_value((x - mean) * contrast + mean + brightness, 0.0, 255.0)
    # Stain and scanner colour differ between sites (the main shift between slides in
    # histopathology), so shift hue a little and scale saturation.
    colour = tf.random.stateless_uniform([batch, 2], seeds[6], -1.0, 1.0)
    hsv = tf.image.rgb_to_hsv(x / 255.0)
    hue = tf.math.floormod(hsv[..., 0] + (colour[:, 0] * 0.04)[:, None, None], 1.0)
    sat = tf.clip_by_value(hsv[..., 1] * (1.0 + colour[:, 1] * 0.25)[:, None, None], 0.0, 1.0)
    x = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1)) * 255.0
    return tf.clip_by_value(x, 0.0, 255.0)


def make_train_dataset(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int, augmentation: str = "dihedral"
) -> Any:
    tf = _tf()
    n = len(x)
    images = tf.constant(x)
    targets = tf.constant(y)
    # Shuffle indices, not images: a shuffle buffer of images would copy the whole set.
    ds = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))

    def load(idx: Any, s: Any) -> Any:
        batch = tf.cast(tf.gather(images, idx), tf.float32)
        return augment_batch(batch, s, augmentation), tf.gather(targets, idx)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Weights n / (k * n_c), so every class contributes equally to the loss."""
    counts = np.bincount(y, minlength=n_classes)
    return {k: float(len(y) / (n_classes * counts[k])) for k in range(n_classes)}


def _make_monitor(x_val: np.ndarray, y_val: np.ndarray, *, patience: int, lr_patience: int | None, verbose: int) -> Any:
    import keras

    class ValidationMonitor(keras.callbacks.Callback):  # type: ignore[misc]  # Keras ships no types
        """Scores the validation split once per epoch (AUC, NLL, accuracy), lowers the
        learning rate on a plateau, stops early and restores the best-AUC weights.
        One pass serves all three, instead of Keras' separate validation loop."""

        def __init__(self) -> None:
            super().__init__()
            self.best_auc = -math.inf
            self.best_epoch = -1
            self.best_weights: list[Any] | None = None
            self.wait = 0
            self.lr_wait = 0
            self.history: list[dict[str, float]] = []

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs if logs is not None else {}
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
                self.best_weights = self.model.get_weights()
                self.wait = self.lr_wait = 0
            else:
                self.wait += 1
                self.lr_wait += 1
                if lr_patience is not None and self.lr_wait >= lr_patience and lr > 1e-5:
                    self.model.optimizer.learning_rate.assign(lr * 0.3)
                    self.lr_wait = 0
                if self.wait >= patience:
                    self.model.stop_training = True
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
    train_files = _limit(layout.train_files, config.limit_per_class, config.seed)
    valid_files = _limit(layout.valid_files, config.limit_per_class, config.seed + 1)
    size = config.image_size
    train = load_split(train_files, labels, size, where="training")
    valid = load_split(valid_files, labels, size, where="validation")
    test = load_split(layout.test_files, labels, size, where="test") if layout.test_files else None
    load_seconds = time.monotonic() - started
    if config.verbose:
        print(
            f"loaded {len(train.labels)} training and {len(valid.labels)} validation images "
            f"({train.unreadable + valid.unreadable} unreadable) in {load_seconds:.1f} s",
            flush=True,
        )

    import keras

    _tf()  # quiet TensorFlow's Python logger before the first graph is built
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.backbone, size, len(labels), weights=config.weights)
    if not 0.0 < config.bn_momentum < 1.0:
        raise DatasetError("--bn-momentum must be between 0 and 1")
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = config.bn_momentum
    if config.schedule not in SCHEDULES:
        raise DatasetError(f"unknown schedule '{config.schedule}' (known: {', '.join(SCHEDULES)})")
    learning_rate: Any = config.learning_rate
    if config.schedule == "cosine":
        steps = config.epochs * math.ceil(len(train.labels) / config.batch_size)
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=0.02)
        schedule_text = f"cosine decay over {config.epochs} epochs to 2 % of the initial rate"
    else:
        schedule_text = f"lr x0.3 after {config.lr_patience} epochs without val AUC gain"
    schedule_text += f"; early stop after {config.patience} epochs without gain; best-val-AUC weights restored"
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    weights = class_weights(train.labels, len(labels))
    dataset = make_train_dataset(
        train.images, train.labels, batch_size=config.batch_size, seed=config.seed, augmentation=config.augmentation
    )
    monitor = _make_monitor(
        valid.images,
        valid.labels,
        patience=config.patience,
        lr_patience=config.lr_patience if config.schedule == "plateau" else None,
        verbose=config.verbose,
    )
    fit_started = time.monotonic()
    model.fit(
        dataset,
        epochs=config.epochs,
        class_weight=weights,
        callbacks=[monitor],
        shuffle=False,  # the dataset shuffles itself, reproducibly
        verbose=config.verbose,
    )
    fit_seconds = time.monotonic() - fit_started

    # Calibrate on the validation logits of the restored best weights.
    logits = model.predict(valid.images, batch_size=256, verbose=0).astype(np.float64)
    temperature = M.fit_temperature(valid.labels, logits)
    report = M.classification_report(valid.labels, logits, labels, temperature=temperature)
    test_report = None
    if test is not None:
        # The test split took no part in training, epoch choice or the temperature.
        test_logits = model.predict(test.images, batch_size=256, verbose=0).astype(np.float64)
        test_report = M.classification_report(test.labels, test_logits, labels, temperature=temperature)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / MODEL_FILE
    # Keras 3 ignores include_optimizer for the .keras format (and clone_model compiles the
    # clone), so save a freshly built, never-compiled copy: weights and architecture only,
    # about a third of the size with the optimizer state.
    export = build_model(config.backbone, size, len(labels), weights=None)
    export.set_weights(model.get_weights())
    tmp_path = out / ("tmp-" + MODEL_FILE)
    export.save(tmp_path)
    reloaded = keras.saving.load_model(tmp_path, compile=False)
    probe = valid.images[:8].astype(np.float32)
    diff = float(np.max(np.abs(np.asarray(reloaded(probe, training=False)) - logits[:8])))
    if diff > 1e-3:
        raise RuntimeError(f"saved model disagrees with the trained one (max diff {diff})")
    tmp_path.replace(model_path)

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
            "split": "test" if test_report is not None else "valid",
            "valid": report,
            **({"test": test_report} if test_report is not None else {}),
            "temperature_fitted_on": "valid"
            + (
                " (the test split is held out)"
                if test_report is not None
                else " (the same split these metrics are measured on)"
            ),
            "training": {
                "backbone": config.backbone,
                "initial_weights": str(config.weights) if config.weights else "random (trained from scratch)",
                "parameters": int(model.count_params()),
                "epochs_requested": config.epochs,
                "epochs_run": len(history),
                "best_epoch": monitor.best_epoch + 1,
                "best_val_auc_during_training": monitor.best_auc,
                "batch_size": config.batch_size,
                "batchnorm_momentum": config.bn_momentum,
                "optimizer": f"AdamW lr {config.learning_rate:g} weight decay {config.weight_decay:g}",
                "schedule": schedule_text,
                "class_weights": {labels[k]: w for k, w in weights.items()},
                "augmentation": (
                    "random flips and 90-degree rotations"
                    if config.augmentation == "dihedral"
                    else "random left-right flips"
                )
                + ", zoom-in up to 10 %, brightness +-10 %, contrast +-15 %, hue +-0.04, saturation +-25 %"
                " (training batches only)",
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
        drift_reference=drift.reference_stats(valid.images, M.softmax(logits, temperature), labels),
    )
    write_manifest(out, manifest)
    (out / MODEL_CARD).write_text(render_model_card(manifest), encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------- model card


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _metrics_section(title: str, v: dict[str, Any], labels: list[str]) -> str:
    cm = v["confusion_matrix"]
    cm_head = "| true \\ predicted | " + " | ".join(labels) + " |"
    cm_sep = "|---" * (len(labels) + 1) + "|"
    cm_rows = "\n".join(
        f"| {label} | " + " | ".join(str(c) for c in row) + " |" for label, row in zip(labels, cm, strict=True)
    )
    pc_rows = "\n".join(
        f"| {label} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | {s['support']} |"
        for label, s in v["per_class"].items()
    )
    auc_kind = "macro one-vs-rest" if len(labels) > 2 else "binary"
    return f"""## {title} (n = {v["n"]})

| metric | value |
|---|---|
| accuracy | {_fmt(v["accuracy"])} |
| balanced accuracy | {_fmt(v["balanced_accuracy"])} |
| ROC AUC ({auc_kind}) | {_fmt(v["roc_auc"])} |
| ECE (15 bins), before temperature | {_fmt(v["ece_before_temperature"])} |
| ECE (15 bins), after temperature | {_fmt(v["ece_after_temperature"])} |
| NLL, before temperature | {_fmt(v["nll_before_temperature"])} |
| NLL, after temperature | {_fmt(v["nll_after_temperature"])} |

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{pc_rows}

Confusion matrix (rows: true label, columns: predicted label):

{cm_head}
{cm_sep}
{cm_rows}
"""


def render_model_card(m: Manifest) -> str:
    """A model card written only from the manifest, so every number is a measured one."""
    t = m.metrics["training"]
    d = m.data_summary
    labels = m.labels
    has_test = "test" in m.metrics
    splits = ["train", "valid"] + (["test"] if has_test else [])
    split_head = "| label | " + " | ".join(splits) + " |"
    split_sep = "|---" * (len(splits) + 1) + "|"
    split_rows = "\n".join(
        f"| {label} | " + " | ".join(str(d["splits"][s][label]) for s in splits) + " |" for label in labels
    )
    unreadable = ", ".join(f"{s} {d['unreadable_skipped'].get(s, 0)}" for s in splits)
    libs = ", ".join(f"{k} {val}" for k, val in m.library_versions.items())
    sections = []
    if has_test:
        sections.append(_metrics_section("Measured performance: held-out TEST split", m.metrics["test"], labels))
        sections.append(
            _metrics_section(
                "Validation split (chose the epoch and fitted the temperature)", m.metrics["valid"], labels
            )
        )
        limitation = (
            "- The test split took no part in training, epoch selection or calibration; with "
            "this few images its figures still carry wide uncertainty (a handful of images "
            "moves them by several points)."
        )
    else:
        sections.append(_metrics_section("Measured performance (validation split)", m.metrics["valid"], labels))
        limitation = (
            "- The validation split chose the best epoch and fitted the temperature, and the figures\n"
            "  above are measured on that same split: they are optimistic. There is no separate\n"
            "  held-out test set in this bundle."
        )
    metrics_text = "\n".join(sections)
    return f"""# Model card: {m.name} {m.version}

> **Demonstration model. Not a diagnostic device and not validated for clinical use.**
> Its outputs must not inform any decision about a patient.

## Task

{m.task}

Labels, ordered least to most advanced: {", ".join(f"`{x}`" for x in labels)}.

## Data

- Dataset: {d.get("dataset_name") or "unnamed"}
- Source: {d.get("source") or "not recorded"}
- License: {d.get("license") or "not recorded"}
- Label order taken from: {d["label_order_source"]}
- Split: {d["split_method"]}
- Unreadable images skipped: {unreadable}; images per class capped at: {d["limit_per_class"]}

{split_head}
{split_sep}
{split_rows}

## Preprocessing

`{m.preprocessing}`: Pillow decode (JPEG draft mode), convert to RGB, resize to \
{m.input_size}x{m.input_size} bilinear, uint8 values 0..255.
The model rescales to 0..1 itself and outputs logits; probabilities are `softmax(logits / T)` with the fitted
temperature T = {m.temperature:.4f}. Predictions whose top probability is below
{m.uncertain_below} are reported as uncertain.

## Architecture and training

- Backbone: `{t["backbone"]}`, {t["parameters"]:,} parameters, initial weights: \
{t.get("initial_weights", "random (trained from scratch)")}.
- Optimizer: {t["optimizer"]}, batch size {t["batch_size"]}, seed {t["seed"]}, BatchNorm \
momentum {t.get("batchnorm_momentum", 0.99)}.
- Schedule: {t["schedule"]}.
- Epochs: {t["epochs_run"]} run of {t["epochs_requested"]} requested; best epoch \
{t["best_epoch"]}.
- Class weights: {", ".join(f"{k} {w:.3f}" for k, w in t["class_weights"].items())}.
- Augmentation: {t["augmentation"]}.
- Time on the training machine ({t["cpu_count"]} CPU cores, no GPU): loading \
{t["load_seconds"]} s, training {t["training_seconds"]} s, total {t["total_seconds"]} s.
- Libraries: {libs}.

{metrics_text}
## Limitations

{limitation}
- The data are a small public research subset, not clinical validation data; they do not
  represent any particular hospital's scanners, stains or patients.
- This is a demonstration model, not a diagnostic device, and it is not validated for
  clinical use.
"""


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
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--lr-patience", type=int, default=2, help="epochs without val AUC gain before lr x0.3")
    p.add_argument("--augmentation", choices=AUGMENTATIONS, default="dihedral")
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
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class per split (smoke)")
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
        patience=a.patience,
        schedule=a.schedule,
        lr_patience=a.lr_patience,
        bn_momentum=a.bn_momentum,
        augmentation=a.augmentation,
        valid_fraction=a.valid_fraction,
        test_fraction=a.test_fraction,
        weights=a.weights,
        uncertain_below=a.uncertain_below,
        limit_per_class=a.limit_per_class,
        verbose=a.verbose,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = _parse(argv)
    try:
        manifest = train_bundle(config)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = manifest.metrics["split"]
    v = manifest.metrics[split]
    print(
        f"wrote {config.out} ({split} split): accuracy {v['accuracy']:.4f}, AUC {v['roc_auc']:.4f}, "
        f"ECE {v['ece_before_temperature']:.4f} -> {v['ece_after_temperature']:.4f} "
        f"(T = {manifest.temperature:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
