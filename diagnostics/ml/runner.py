"""Inference on a verified model bundle, once per worker process.

Loading TensorFlow and tracing the first call cost seconds (docs/MEASURED.md), so a
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
        @tf.function(reduce_retracing=True)
        def call(x: Any) -> Any:
            return model(x, training=False)

        self._call = call
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
