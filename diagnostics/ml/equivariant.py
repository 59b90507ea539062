"""Group convolutions over the dihedral group D4 (the 4 rotations by 90 degrees and
their mirror images), after Cohen & Welling, "Group Equivariant Convolutional
Networks" (ICML 2016), the p4m layers of Veeling et al.'s PCam paper.

Tissue has no orientation, so a patch and its rotations or mirror images must get the
same answer. Augmentation only asks the network to learn that; these layers build it
in. A lifting layer turns an image into 8 oriented copies of each feature map, one per
group element; a group layer maps such stacks to stacks; pooling over the 8 copies at
the end gives a feature map that turns with the input and pooled features that do not
change at all. Every kernel is stored once and its 8 transformed copies are gathered
from it at each call, so the network has the parameters of one orientation.

Channel layout: a stack of C feature maps is 8 * C channels, group-element major
(channel g * C + c is feature c at element g), so `Reshape((h, w, 8, C))` splits it.

Exact for 3 x 3 kernels with "same" padding, stride 1, and 2 x 2 max pooling on even
sizes (96 -> 48 -> 24 -> 12 -> 6): each of those commutes with the 8 transforms of the
pixel grid. The tests check it on random inputs.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

ORDER = 8  # elements of D4


def _elements() -> list[np.ndarray]:
    """D4 as the 8 signed permutation matrices acting on (row, column) offsets:
    rotations r^k, then the rotations after a mirror."""
    rot = np.array([[0, -1], [1, 0]])
    mirror = np.array([[1, 0], [0, -1]])
    rotations = [np.linalg.matrix_power(rot, k) for k in range(4)]
    return rotations + [r @ mirror for r in rotations]


def _index(elements: list[np.ndarray], matrix: np.ndarray) -> int:
    for i, e in enumerate(elements):
        if np.array_equal(e, matrix):
            return i
    raise AssertionError("not an element of D4")  # pragma: no cover - the group is closed


def kernel_index(kernel_size: int, in_channels: int, filters: int, *, lifting: bool) -> np.ndarray:
    """Where each entry of the full (k, k, in, 8 * filters) kernel comes from in the
    flattened stored kernel (k, k, in, filters).

    For output element g, the kernel at offset y reading input element h is the stored
    kernel at offset g^-1 y reading element g^-1 h (lifting layers have no input
    elements): then transforming the input by any element k transforms each output map
    by k and moves it from element g to k^-1 g, which is what makes the stack equivariant.
    """
    if kernel_size % 2 != 1:
        raise ValueError("group convolutions need an odd kernel size")
    elements = _elements()
    inverse = [_index(elements, np.round(np.linalg.inv(e)).astype(int)) for e in elements]
    k, r = kernel_size, kernel_size // 2
    groups_in = 1 if lifting else ORDER
    if in_channels % groups_in:
        raise ValueError(f"{in_channels} input channels are not a stack of {groups_in} groups")
    base_in = in_channels // groups_in
    stored = np.arange(k * k * in_channels * filters).reshape(k, k, in_channels, filters)
    full = np.empty((k, k, in_channels, ORDER * filters), dtype=np.int32)
    for g in range(ORDER):
        g_inv = elements[inverse[g]]
        # Input channel h * base_in + c reads stored channel (g^-1 h) * base_in + c.
        if lifting:
            channel = np.arange(in_channels)
        else:
            channel = np.concatenate(
                [_index(elements, g_inv @ elements[h]) * base_in + np.arange(base_in) for h in range(ORDER)]
            )
        for u in range(k):
            for v in range(k):
                du, dv = g_inv @ np.array([u - r, v - r])
                full[u, v, :, g * filters : (g + 1) * filters] = stored[du + r, dv + r][channel]
    return full


@keras.saving.register_keras_serializable(package="cancerweb")
class D4Conv2D(keras.layers.Layer):  # type: ignore[misc]  # Keras ships no types
    """A convolution equivariant to the 90-degree rotations and mirror images.

    `lifting=True` reads an ordinary image (any channels) and writes 8 * filters
    channels; `lifting=False` reads and writes stacks of 8. No bias: a BatchNorm follows.
    """

    def __init__(self, filters: int, kernel_size: int = 3, *, lifting: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.lifting = bool(lifting)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_channels = int(input_shape[-1])  # type: ignore[arg-type]
        k = self.kernel_size
        self._gather = kernel_index(k, in_channels, self.filters, lifting=self.lifting)
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, in_channels, self.filters), initializer="he_normal", trainable=True
        )

    def full_kernel(self) -> Any:
        flat = ops.reshape(self.kernel, (-1,))
        return ops.take(flat, ops.convert_to_tensor(self._gather), axis=0)

    def call(self, inputs: Any) -> Any:
        return ops.conv(inputs, ops.cast(self.full_kernel(), inputs.dtype), strides=1, padding="same")

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], ORDER * self.filters)

    def get_config(self) -> dict[str, Any]:
        own = {"filters": self.filters, "kernel_size": self.kernel_size, "lifting": self.lifting}
        return {**super().get_config(), **own}


@keras.saving.register_keras_serializable(package="cancerweb")
class D4Pool(keras.layers.Layer):  # type: ignore[misc]
    """The mean over the 8 group elements of a stack: (h, w, 8 * C) -> (h, w, C). The
    result turns with the input; its global average does not change at all."""

    def call(self, inputs: Any) -> Any:
        h, w, c = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        return ops.mean(ops.reshape(inputs, (-1, h, w, ORDER, c // ORDER)), axis=3)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], int(input_shape[-1]) // ORDER)  # type: ignore[arg-type]


def group_batch_norm(x: Any, *, name: str, momentum: float = 0.99) -> Any:
    """BatchNorm with one mean, variance, scale and offset per feature, shared by its 8
    oriented copies (per-channel statistics would treat orientations differently)."""
    # (h, w, 8 * C) -> (h, 8 * w, C): each feature's 8 copies side by side, so the
    # ordinary (fused) 4-D BatchNorm takes its statistics over all of them.
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    x = keras.layers.Reshape((h, w * ORDER, c // ORDER), name=f"{name}_split")(x)
    x = keras.layers.BatchNormalization(axis=-1, momentum=momentum, name=name)(x)
    return keras.layers.Reshape((h, w, c), name=f"{name}_join")(x)
