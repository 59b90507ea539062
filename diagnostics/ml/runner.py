"""Inference on a verified model bundle, once per worker process.

Loading TensorFlow and tracing the first call cost seconds (docs/performance.md), so a
worker builds one `InferenceRunner` and reuses it. Calls go through one compiled
`tf.function`: at batch 1 it is about 2.6x faster than `model.predict` on these CPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from .bundle import BundleError, Manifest, verify_bundle  # noqa: E402
from .metrics import softmax  # noqa: E402
from .preprocess import decode_rgb  # noqa: E402


class InferenceRunner:
    manifest: Manifest
    labels: list[str]
    input_size: int

    def __init__(self, bundle_dir: str | Path) -> None:
        import keras
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        self.manifest = verify_bundle(bundle_dir)
        self.labels = list(self.manifest.labels)
        self.input_size = self.manifest.input_size
        self._temperature = self.manifest.temperature
        model_path = Path(bundle_dir) / self.manifest.model_file
        try:
            model = keras.saving.load_model(model_path, compile=False)
        except Exception as exc:  # Keras raises many types for a corrupt file.
            raise BundleError(f"cannot load model file {self.manifest.model_file}: {exc}") from exc
        expected_in = (None, self.input_size, self.input_size, 3)
        if tuple(model.input_shape) != expected_in:
            raise BundleError(
                f"model input shape {tuple(model.input_shape)} does not match the manifest input_size {self.input_size}"
            )
        if model.output_shape[-1] != len(self.labels):
            raise BundleError(
                f"model gives {model.output_shape[-1]} outputs but the manifest lists {len(self.labels)} labels"
            )
        self._model = model
        self._tf = tf

        # One compiled call; reduce_retracing lets a second batch size relax the traced
        # shape to a dynamic batch instead of tracing once per size.
        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]  # TensorFlow ships no types
        def call(x: Any) -> Any:
            return model(x, training=False)

        self._call = call

        # Grad-CAM in the same compiled pass: the last 4-D feature map and the gradient
        # of each image's top logit with respect to it come out of ONE graph with the
        # logits. Compiled, this adds about 4 % at batch 8; done eagerly it costs 2.5-3x
        # the prediction (docs/performance.md).
        features_and_logits = keras.Model(model.inputs, [feature_output(model), model.outputs[0]])

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]  # TensorFlow ships no types
        def call_with_cam(x: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)  # records the whole graph, so intermediate features get gradients
                features, logits = features_and_logits(x, training=False)
                top = tf.argmax(logits, axis=1, output_type=tf.int32)
                score = tf.reduce_sum(tf.gather(logits, top[:, None], batch_dims=1))
            grads = tape.gradient(score, features)
            weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
            peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
            cam = tf.math.divide_no_nan(cam, peak)
            return logits, cam

        self._call_with_cam = call_with_cam
        # Warm up at batch 1, the common request size, so the first user waits no longer.
        self.bare_call(np.zeros((1, self.input_size, self.input_size, 3), dtype=np.uint8))

    def preprocess(self, data: bytes) -> np.ndarray:
        return decode_rgb(data, size=self.input_size)

    def _check(self, batch: np.ndarray) -> np.ndarray:
        arr = np.asarray(batch)
        s = self.input_size
        if arr.ndim != 4 or arr.shape[1:] != (s, s, 3):
            raise ValueError(f"expected a batch of shape (N, {s}, {s}, 3), got {arr.shape}")
        return arr

    def bare_call(self, batch: np.ndarray) -> np.ndarray:
        """The compiled model call: logits, no temperature scaling."""
        arr = self._check(batch)
        x = self._tf.convert_to_tensor(arr, dtype=self._tf.float32)
        return np.asarray(self._call(x))

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities, shape (N, len(labels)), rows summing to 1."""
        arr = self._check(batch)
        if arr.shape[0] == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return softmax(self.bare_call(arr), self._temperature)

    def predict_with_heatmaps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Temperature-scaled probabilities (N, K) and Grad-CAM maps (N, h, w) in 0..1 for
        each image's top class, h x w being the last feature map's grid."""
        arr = self._check(batch)
        if arr.shape[0] == 0:
            return np.zeros((0, len(self.labels))), np.zeros((0, 1, 1))
        x = self._tf.convert_to_tensor(arr, dtype=self._tf.float32)
        logits, cam = self._call_with_cam(x)
        return softmax(np.asarray(logits), self._temperature), np.asarray(cam, dtype=np.float32)


def feature_output(model: Any) -> Any:
    """The symbolic output of the last layer with a spatial (N, h, w, c) output, in the
    model's own graph: the input of Grad-CAM. For an applications backbone nested as one
    layer that is the backbone's call in the outer graph (its `.output` would be the
    backbone's inner graph, disconnected from the model's input)."""
    for layer in reversed(model.layers):
        nodes = getattr(layer, "_inbound_nodes", [])
        if not nodes or layer.name == "image":
            continue
        tensor = nodes[-1].output_tensors[0]
        if len(tensor.shape) == 4:
            return tensor
    raise BundleError("the model has no spatial feature layer for a heat map")
