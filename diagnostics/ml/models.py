"""Network builders. Every network takes RGB in 0..255 and returns logits.

Rescaling happens inside the model so a bundle needs no separate normalisation step,
and the output is logits (never a softmax or sigmoid) so that temperature scaling at
inference time is exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from keras import layers  # noqa: E402

SMALL_CNN_FILTERS = (16, 32, 64, 128, 256)


def build_small_cnn(input_size: int, n_labels: int, *, dropout: float = 0.3, name: str = "small_cnn") -> keras.Model:
    """Five Conv-BN-ReLU blocks (16 -> 256 filters), global average pooling, dropout,
    Dense logits: about 0.4 M parameters. On the CPUs this project runs on it trains
    far faster than ImageNet-sized networks, which without pretrained weights do not
    settle within a practical budget (docs/MEASURED.md)."""
    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, filters in enumerate(SMALL_CNN_FILTERS):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        # Halve the resolution after every block but the last (96 px -> 6 px).
        if i < len(SMALL_CNN_FILTERS) - 1 and x.shape[1] is not None and x.shape[1] >= 2:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_labels, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


BACKBONES: dict[str, Callable[[int, int], keras.Model]] = {
    "small_cnn": build_small_cnn,
}


def build_model(backbone: str, input_size: int, n_labels: int) -> keras.Model:
    try:
        builder = BACKBONES[backbone]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone '{backbone}' (known: {known})") from None
    return builder(input_size, n_labels)
