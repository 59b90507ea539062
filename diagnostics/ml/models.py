"""Network builders. Every network takes RGB in 0..255 and returns logits.

Rescaling happens inside the model so a bundle needs no separate normalisation step,
and the output is logits (never a softmax or sigmoid) so that temperature scaling at
inference time is exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from diagnostics.ml.equivariant import D4Conv2D, D4Pool, group_batch_norm  # noqa: E402

SMALL_CNN_FILTERS = (16, 32, 64, 128, 256)
# Features per group element; each layer has 8 oriented copies of each.
SMALL_P4M_FILTERS = (2, 6, 12, 24, 48)


def build_small_cnn(input_size: int, n_labels: int, *, dropout: float = 0.3, name: str = "small_cnn") -> keras.Model:
    """Five Conv-BN-ReLU blocks (16 -> 256 filters), global average pooling, dropout,
    Dense logits: about 0.4 M parameters. On the CPUs this project runs on it trains
    far faster than ImageNet-sized networks, which without pretrained weights do not
    settle within a practical budget (docs/performance.md)."""
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


def build_small_p4m_cnn(
    input_size: int, n_labels: int, *, dropout: float = 0.3, name: str = "small_p4m_cnn"
) -> keras.Model:
    """The small CNN's five blocks as group convolutions over the 90-degree rotations and
    mirror images (diagnostics/ml/equivariant.py): 2 -> 48 features per orientation, so 16
    -> 384 channels and about 0.11 M parameters (a quarter of the small CNN's; about 1.8
    times its training time per step, docs/performance.md). Pooling over the 8
    orientations before global average pooling makes the logits the same, to rounding,
    for a patch and its 7 transforms, without test-time views. Needs an input size
    divisible by 16 (every pooling must halve an even size)."""
    multiple = SIZE_MULTIPLE["small_p4m_cnn"]
    if input_size % multiple:
        raise ValueError(f"small_p4m_cnn needs an input size divisible by {multiple}, not {input_size}")
    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for i, filters in enumerate(SMALL_P4M_FILTERS):
        x = D4Conv2D(filters, 3, lifting=i == 0, name=f"conv{i + 1}")(x)
        x = group_batch_norm(x, name=f"bn{i + 1}")
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        if i < len(SMALL_P4M_FILTERS) - 1:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = D4Pool(name="group_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_labels, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _applications_model(
    app: Callable[..., keras.Model], input_size: int, n_labels: int, name: str, *, rescale: str
) -> keras.Model:
    """An ImageNet-family backbone built with `weights=None` (nothing is downloaded),
    global average pooling and a Dense logits head. `rescale` maps 0..255 input to the
    range the backbone expects when it does not do so itself."""
    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    x = inputs
    if rescale == "minus_one_one":
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(x)
    base = app(include_top=False, weights=None, input_shape=(input_size, input_size, 3), pooling=None)
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="dropout")(x)
    outputs = layers.Dense(n_labels, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def build_efficientnetb0(input_size: int, n_labels: int) -> keras.Model:
    # EfficientNet rescales 0..255 internally.
    return _applications_model(
        keras.applications.EfficientNetB0, input_size, n_labels, "efficientnetb0", rescale="none"
    )


def build_resnet50(input_size: int, n_labels: int) -> keras.Model:
    return _applications_model(keras.applications.ResNet50, input_size, n_labels, "resnet50", rescale="minus_one_one")


def build_mobilenetv3small(input_size: int, n_labels: int) -> keras.Model:
    # MobileNetV3 has its own 0..255 rescaling layer (include_preprocessing=True).
    return _applications_model(
        keras.applications.MobileNetV3Small, input_size, n_labels, "mobilenetv3small", rescale="none"
    )


# Backbones whose logits do not change when the input is turned by 90 degrees or mirrored,
# with the sentence the model card says about them. Test-time views are pointless on them.
INVARIANT_BACKBONES: dict[str, str] = {
    "small_p4m_cnn": (
        "group convolutions over the 8 rotations by 90 degrees and mirror images (p4m), "
        "pooled over the orientations: the same logits for a patch and its 7 transforms"
    ),
}
# The input size each backbone's pooling needs a multiple of (every pooling halves an even size).
SIZE_MULTIPLE: dict[str, int] = {"small_p4m_cnn": 2 ** (len(SMALL_P4M_FILTERS) - 1)}

BACKBONES: dict[str, Callable[[int, int], keras.Model]] = {
    "small_cnn": build_small_cnn,
    "small_p4m_cnn": build_small_p4m_cnn,
    "efficientnetb0": build_efficientnetb0,
    "resnet50": build_resnet50,
    "mobilenetv3small": build_mobilenetv3small,
}


def build_model(backbone: str, input_size: int, n_labels: int, *, weights: str | Path | None = None) -> keras.Model:
    """Build a network; with `weights`, load them from a local file. A file that holds the
    whole model's weights is loaded as is; otherwise it is taken as backbone-only weights
    (e.g. an ImageNet `*_notop.h5`) and loaded into the backbone, with the head random."""
    try:
        builder = BACKBONES[backbone]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone '{backbone}' (known: {known})") from None
    model = builder(input_size, n_labels)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"weights file {path} does not exist")
        try:
            model.load_weights(path)
        except Exception as full_exc:  # Keras raises many types for mismatched files.
            base = next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)
            if base is None:
                raise ValueError(f"cannot load weights from {path}: {full_exc}") from full_exc
            try:
                base.load_weights(path)
            except Exception as exc:
                raise ValueError(
                    f"cannot load weights from {path} into the {backbone} model or its backbone: {exc}"
                ) from exc
    return model


def build_ensemble(members: Sequence[keras.Model], *, name: str = "ensemble") -> keras.Model:
    """One network whose logits are exactly the mean of the members' logits.

    Every member ends in feature map -> `gap` -> dropout -> Dense `logits` (all the
    builders above do). The ensemble runs each member's layers up to its feature map,
    concatenates the maps along the channels (`member_features`), pools them and applies
    one Dense whose kernel stacks the members' kernels divided by N and whose bias is
    their mean: the average of N linear heads over pooled features is one linear head
    over the concatenated pooled features. So the bundle keeps a single spatial feature
    map before a linear head, and Grad-CAM and the out-of-distribution features (the
    pooled map) work on it as on one network. Dropout is left out: it is the identity at
    inference, and the ensemble is never trained as a whole."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    shape = tuple(members[0].input_shape[1:])
    n_labels = members[0].output_shape[-1]
    for m in members[1:]:
        if tuple(m.input_shape[1:]) != shape or m.output_shape[-1] != n_labels:
            raise ValueError("ensemble members must share the input shape and the labels")
    inputs = keras.Input(shape=shape, name="image")
    maps = []
    kernels, biases = [], []
    for i, member in enumerate(members):
        trunk = keras.Model(member.inputs, member.get_layer("gap").input, name=f"member{i + 1}")
        maps.append(trunk(inputs))
        kernel, bias = member.get_layer("logits").get_weights()
        kernels.append(kernel)
        biases.append(bias)
    x = layers.Concatenate(axis=-1, name="member_features")(maps)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(n_labels, name="logits")(x)
    model = keras.Model(inputs, outputs, name=name)
    model.get_layer("logits").set_weights(
        [np.concatenate(kernels, axis=0) / len(members), np.mean(np.stack(biases), axis=0)]
    )
    return model
