"""A model bundle that is slow on purpose, so fault tests can kill a worker while it is
inside the network (what a large model on a busy CPU looks like), without a test hook
in the product's inference path. Random weights: its answers mean nothing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from diagnostics.ml.bundle import Manifest, sha256_file, write_manifest
from diagnostics.ml.preprocess import PREPROCESSING_ID

TASK = "Lymph-node metastasis in H&E patches"  # the bundled demo model's task
LABELS = ["no-metastasis", "metastasis"]


def _build(size: int, layers: int) -> object:
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(192, 3, padding="same", activation="relu")(x)
    for _ in range(layers):
        x = keras.layers.Conv2D(192, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(len(LABELS))(x))


def make_slow_bundle(out: Path, *, seconds_per_image: float, size: int = 96) -> float:
    """Write the bundle to ``out`` with enough convolutions that one image takes about
    ``seconds_per_image`` on this machine (measured here, so a faster or busier machine
    gets a matching depth). Returns the measured seconds per image."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    batch = np.zeros((1, size, size, 3), dtype="float32")

    def per_image(model: object) -> float:
        call = tf.function(lambda x: model(x, training=False))  # type: ignore[operator]
        call(batch)  # trace
        started = time.perf_counter()
        for _ in range(2):
            call(batch)
        return (time.perf_counter() - started) / 2

    layers = 2
    measured = per_image(_build(size, layers))
    layers = max(1, min(60, round(layers * seconds_per_image / max(measured, 1e-3))))
    model = _build(size, layers)
    measured = per_image(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")  # type: ignore[attr-defined]
    write_manifest(
        out,
        Manifest(
            name="fault-slow",
            version=f"{layers}-layers",
            task=TASK,
            labels=LABELS,
            input_size=size,
            preprocessing=PREPROCESSING_ID,
            temperature=1.0,
            uncertain_below=0.6,
            metrics={"note": f"random weights, for fault tests only: {measured:.2f} s per image when built"},
            data_summary={},
            model_file="model.keras",
            model_sha256=sha256_file(out / "model.keras"),
            library_versions={},
        ),
    )
    return measured
