"""Inference on a verified model bundle, once per worker process, on either Keras backend.

The same `.keras` bundle loads under `KERAS_BACKEND=tensorflow` (the CPU hosts, the
default) or `KERAS_BACKEND=jax` (the GPU hosts, which have JAX but no TensorFlow).
Loading and tracing the first call cost seconds, so a worker builds one
`InferenceRunner` and reuses it.

Each backend gets ONE compiled function over `stateless_call` (a `tf.function` or a
`jax.jit`), returning a `RunnerOutput`: logits, temperature-scaled probabilities and,
when asked, Grad-CAM heat maps computed in the same compiled call (the gradient of each
image's top logit with respect to the last spatial feature map). The network is split
at that feature map into a backbone and a head (two Keras models sharing the bundle's
layers), so both backends take the same gradient the same way.

A bundle whose manifest names test-time views (`tta`: "flip-lr", "dihedral8") is
defined with them: both compiled functions run every view of the batch in one call,
average the logits, take each view's Grad-CAM for the averaged top class, turn each map
back to the image's orientation and average them, and average the pooled features.
Probabilities then come from the bundle's calibration (calibration.py).

JAX traces once per input shape, so batches are padded up to the next power of two
(1, 2, 4, ... 256, then multiples of 256): a worker traces a handful of shapes, never
one per batch size. The padded rows are dropped before anything is returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from .augment import unviews, view_count, views  # noqa: E402
from .bundle import BundleError, Manifest, verify_bundle  # noqa: E402
from .calibration import probabilities as calibrated  # noqa: E402
from .ood import OodError, References, image_statistics  # noqa: E402
from .ood import reasons as ood_reasons  # noqa: E402
from .preprocess import IMAGE_SUFFIXES, decode_rgb  # noqa: E402

PRECISIONS = ("float32", "bfloat16")
# bfloat16 keeps 8 bits of mantissa: the largest change in any class probability on the
# check images that is still accepted before a worker refuses to start in bfloat16.
BFLOAT16_TOLERANCE = 0.02
CHECK_IMAGES_DIR = "check_images"


@dataclass(frozen=True)
class RunnerOutput:
    """One batch through the network. `features` is the last spatial feature map
    averaged over its grid (N, C); `heatmaps` are Grad-CAM maps in 0..1 (N, h, w) for
    each image's top class, or None when they were not asked for."""

    logits: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray | None = None
    heatmaps: np.ndarray | None = None


def backend_name() -> str:
    import keras

    return str(keras.backend.backend())


def describe_device() -> str:
    """Where the backend runs the network: "cpu", or the first accelerator, e.g.
    "cuda:0 (NVIDIA H200)" (one worker process per GPU: CUDA_VISIBLE_DEVICES)."""
    if backend_name() == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform == "cpu":
            return "cpu"
        return f"{dev.platform}:{dev.id} ({getattr(dev, 'device_kind', '') or 'accelerator'})"
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"gpu:0 ({gpus[0].name})" if gpus else "cpu"


def _bucket(n: int) -> int:
    if n <= 256:
        return 1 << max(0, (n - 1).bit_length())
    return -(-n // 256) * 256


def _bf16_config(config: Any) -> Any:
    """A model config with every float32 layer policy turned into mixed_bfloat16
    (variables stay float32, arithmetic in bfloat16)."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            if config["config"].get("name") == "float32":
                return {**config, "config": {**config["config"], "name": "mixed_bfloat16"}}
            return config
        return {k: _bf16_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_bf16_config(v) for v in config]
    return config


class InferenceRunner:
    manifest: Manifest
    labels: list[str]
    input_size: int
    backend: str
    precision: str
    device: str

    def __init__(self, bundle_dir: str | Path, *, precision: str = "float32") -> None:
        import keras

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
        self.backend = backend_name()
        if self.backend not in ("tensorflow", "jax"):
            raise BundleError(f"the Keras backend '{self.backend}' is not supported (use tensorflow or jax)")
        if self.backend == "tensorflow":
            import tensorflow as tf

            tf.get_logger().setLevel("ERROR")
        self.bundle_dir = Path(bundle_dir)
        self.manifest = verify_bundle(bundle_dir)
        self.labels = list(self.manifest.labels)
        self.input_size = self.manifest.input_size
        self.precision = precision
        self._temperature = self.manifest.temperature
        self.tta = self.manifest.tta
        model_path = self.bundle_dir / self.manifest.model_file
        from . import equivariant  # noqa: F401  (registers the group layers a bundle may hold)

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
        if precision == "bfloat16":
            reference = model
            model = keras.Model.from_config(_bf16_config(model.get_config()))
            model.set_weights(reference.get_weights())
        self._model = model
        features = feature_output(model)
        self._backbone = keras.Model(model.inputs, features)
        self._head = keras.Model(features, model.outputs[0])
        self._traces = 0
        # The out-of-distribution references, when the bundle carries them (verified above).
        self.ood: dict[str, Any] = dict(self.manifest.ood)
        try:
            self._ood_refs = References.from_file(self.bundle_dir / self.ood["file"]) if self.ood else None
        except OodError as exc:
            raise BundleError(str(exc)) from exc
        if self._ood_refs is not None and self._ood_refs.features.class_means.shape[1] != features.shape[-1]:
            raise BundleError("the out-of-distribution reference does not fit the model's feature layer")
        self._bare, self._full = self._compile()
        self.device = self._device()
        # Warm up at batch 1, the common request size, so the first user waits no longer.
        self.run(np.zeros((1, self.input_size, self.input_size, 3), dtype=np.uint8), heatmaps=True)

    # --- compilation, one function per backend --------------------------------------

    def _compile(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        model, backbone, head = self._model, self._backbone, self._head
        tta, n_views, k = self.tta, view_count(self.tta), len(self.labels)
        m_vars = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
        b_vars = ([v.value for v in backbone.trainable_variables], [v.value for v in backbone.non_trainable_variables])
        h_vars = ([v.value for v in head.trainable_variables], [v.value for v in head.non_trainable_variables])

        if self.backend == "jax":
            import jax
            import jax.numpy as jnp

            def bare(mv: Any, x: Any) -> Any:
                self._traces += 1  # runs once per trace, not per call
                xs = jnp.concatenate(views(jnp, x, tta), axis=0)
                logits, _ = model.stateless_call(mv[0], mv[1], xs, training=False)
                return jnp.mean(logits.astype(jnp.float32).reshape(n_views, -1, k), axis=0)

            def full(bv: Any, hv: Any, x: Any) -> Any:
                self._traces += 1
                xs = jnp.concatenate(views(jnp, x, tta), axis=0)
                feats, _ = backbone.stateless_call(bv[0], bv[1], xs, training=False)

                def head_logits(f: Any) -> Any:
                    out, _ = head.stateless_call(hv[0], hv[1], f, training=False)
                    return out.astype(jnp.float32)

                logits, pullback = jax.vjp(head_logits, feats)
                mean_logits = jnp.mean(logits.reshape(n_views, -1, k), axis=0)
                top = jnp.tile(jnp.argmax(mean_logits, axis=1), n_views)
                (grads,) = pullback(jax.nn.one_hot(top, k, dtype=logits.dtype))
                cam, pooled = _cam(jnp, feats.astype(jnp.float32), grads.astype(jnp.float32), tta, n_views)
                return mean_logits, cam, pooled

            bare_jit, full_jit = jax.jit(bare), jax.jit(full)
            return (lambda x: bare_jit(m_vars, x)), (lambda x: full_jit(b_vars, h_vars, x))

        import tensorflow as tf

        # reduce_retracing relaxes a second batch size to a dynamic batch dimension
        # instead of tracing once per size.
        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]  # TensorFlow ships no types
        def bare_tf(x: Any) -> Any:
            self._traces += 1
            xs = tf.concat(views(tf, x, tta), axis=0)
            logits, _ = model.stateless_call(m_vars[0], m_vars[1], xs, training=False)
            return tf.reduce_mean(tf.reshape(tf.cast(logits, tf.float32), [n_views, -1, k]), axis=0)

        @tf.function(reduce_retracing=True)  # type: ignore[untyped-decorator]
        def full_tf(x: Any) -> Any:
            self._traces += 1
            xs = tf.concat(views(tf, x, tta), axis=0)
            feats, _ = backbone.stateless_call(b_vars[0], b_vars[1], xs, training=False)
            with tf.GradientTape() as tape:
                tape.watch(feats)
                logits, _ = head.stateless_call(h_vars[0], h_vars[1], feats, training=False)
                logits = tf.cast(logits, tf.float32)
                mean_logits = tf.reduce_mean(tf.reshape(logits, [n_views, -1, k]), axis=0)
                top = tf.tile(tf.argmax(mean_logits, axis=1, output_type=tf.int32), [n_views])
                score = tf.reduce_sum(tf.gather(logits, top[:, None], batch_dims=1))
            grads = tape.gradient(score, feats)
            cam, pooled = _cam(tf, tf.cast(feats, tf.float32), tf.cast(grads, tf.float32), tta, n_views)
            return mean_logits, cam, pooled

        return bare_tf, full_tf

    def _device(self) -> str:
        return describe_device()

    @property
    def trace_count(self) -> int:
        """How many times a compiled function was traced (a test keeps this small)."""
        return self._traces

    # --- calls ------------------------------------------------------------------------

    def preprocess(self, data: bytes) -> np.ndarray:
        return decode_rgb(data, size=self.input_size)

    def _check(self, batch: np.ndarray) -> np.ndarray:
        arr = np.asarray(batch)
        s = self.input_size
        if arr.ndim != 4 or arr.shape[1:] != (s, s, 3):
            raise ValueError(f"expected a batch of shape (N, {s}, {s}, 3), got {arr.shape}")
        return arr

    def _input(self, arr: np.ndarray) -> Any:
        x = arr.astype(np.float32, copy=False)
        if self.backend == "jax":
            n = len(x)
            size = _bucket(n)
            if size != n:
                x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), np.float32)])
            return x
        return self._tf_convert(x)

    def _tf_convert(self, x: np.ndarray) -> Any:
        import tensorflow as tf

        return tf.convert_to_tensor(x, dtype=tf.float32)

    def bare_call(self, batch: np.ndarray) -> np.ndarray:
        """The compiled model call alone: logits (averaged over the bundle's test-time
        views), no calibration, no heat maps."""
        arr = self._check(batch)
        return np.asarray(self._bare(self._input(arr)))[: len(arr)]

    def run(self, batch: np.ndarray, *, heatmaps: bool = True) -> RunnerOutput:
        """One compiled call on a batch of uint8 RGB images (N, s, s, 3)."""
        arr = self._check(batch)
        n = len(arr)
        if n == 0:
            k = len(self.labels)
            return RunnerOutput(np.zeros((0, k), np.float32), np.zeros((0, k)), None, np.zeros((0, 1, 1), np.float32))
        if not heatmaps:
            logits = self.bare_call(arr)
            return RunnerOutput(logits, self.probabilities(logits))
        logits, cam, pooled = self._full(self._input(arr))
        logits = np.asarray(logits)[:n]
        return RunnerOutput(
            logits=logits,
            probabilities=self.probabilities(logits),
            features=np.asarray(pooled, dtype=np.float32)[:n],
            heatmaps=np.asarray(cam, dtype=np.float32)[:n],
        )

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from logits, as the bundle defines them."""
        return calibrated(logits, temperature=self._temperature, calibration=self.manifest.calibration)

    def ood_reasons(
        self, output: RunnerOutput, batch: np.ndarray, sizes: list[tuple[int, int]]
    ) -> list[dict[str, Any]]:
        """Per image of a batch run with features: its feature distance and why it is
        outside what the model was trained on (`reasons` empty: it is not). A bundle
        without a reference gives no distance and no reason."""
        if self._ood_refs is None or output.features is None:
            return [{"score": None, "reasons": []} for _ in sizes]
        feature_scores = self._ood_refs.features.scores(output.features)
        image_scores = self._ood_refs.images.scores(image_statistics(batch))
        return [
            {
                "score": float(f),
                "reasons": ood_reasons(
                    width=w, height=h, image=img, feature_score=float(f), image_score=float(i), section=self.ood
                ),
            }
            for (w, h), img, f, i in zip(sizes, batch, feature_scores, image_scores, strict=True)
        ]

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities, shape (N, len(labels)), rows summing to 1."""
        return self.run(batch, heatmaps=False).probabilities

    def predict_tiles(self, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """What the slide path asks of the network (`slides.Predict`): calibrated
        probabilities of a batch of full-size tiles and, when the bundle carries an
        out-of-distribution reference, each tile's flag by the rule a single image gets.
        The pooled features come from the heat-map call; its maps are dropped (their
        extra cost is the gradient through the linear head, not through the backbone)."""
        if self._ood_refs is None:
            return self.predict_arrays(batch)
        out = self.run(batch, heatmaps=True)
        side = self.input_size
        reasons = self.ood_reasons(out, np.asarray(batch), [(side, side)] * len(out.probabilities))
        return out.probabilities, np.array([bool(r["reasons"]) for r in reasons], dtype=bool)

    def predict_with_heatmaps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Temperature-scaled probabilities (N, K) and Grad-CAM maps (N, h, w) in 0..1 for
        each image's top class, h x w being the last feature map's grid."""
        out = self.run(batch, heatmaps=True)
        assert out.heatmaps is not None
        return out.probabilities, out.heatmaps

    # --- reduced precision ------------------------------------------------------------

    def check_images(self, count: int = 8) -> np.ndarray:
        """The bundle's own check images (its `check_images/` folder), or, for a bundle
        without one, a fixed seeded set of smooth colour fields and noise."""
        folder = self.bundle_dir / CHECK_IMAGES_DIR
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                return np.stack([self.preprocess(p.read_bytes()) for p in files])
        rng = np.random.default_rng(20261202)
        s = self.input_size
        ramp = np.linspace(0, 255, s, dtype=np.float32)
        images = []
        for i in range(count):
            base = rng.uniform(0, 255, size=3).astype(np.float32)
            field = (ramp[None, :, None] * (i % 3 == 0) + ramp[:, None, None] * (i % 3 == 1)) * 0.5
            noise = rng.normal(0, 30 + 10 * i, size=(s, s, 3)).astype(np.float32)
            images.append(np.clip(base + field + noise, 0, 255).astype(np.uint8))
        return np.stack(images)


def _cam(ops: Any, feats: Any, grads: Any, tta: str = "none", n_views: int = 1) -> tuple[Any, Any]:
    """Grad-CAM from the feature map (V*N, h, w, c) of V stacked views and the top
    logit's gradient: the channels weighted by their mean gradient, ReLU; each view's map
    turned back to the image's orientation, the V maps averaged and scaled to a peak of
    1. Also the grid-averaged features, averaged over the views. `ops` is jax.numpy or
    tensorflow (both name these alike through their NumPy-style `experimental.numpy` /
    `jax.numpy` modules)."""
    np_ops = getattr(getattr(ops, "experimental", None), "numpy", ops)
    weights = np_ops.mean(grads, axis=(1, 2), keepdims=True)
    cams = np_ops.maximum(np_ops.sum(weights * feats, axis=-1), 0.0)
    grid = tuple(int(d) for d in cams.shape[1:])
    per_view = np_ops.reshape(cams, (n_views, -1, *grid))
    cam = np_ops.mean(np_ops.stack(unviews(ops, [per_view[i] for i in range(n_views)], tta)), axis=0)
    pooled = np_ops.mean(np_ops.reshape(np_ops.mean(feats, axis=(1, 2)), (n_views, -1, int(feats.shape[-1]))), axis=0)
    peak = np_ops.max(cam, axis=(1, 2), keepdims=True)
    safe = np_ops.where(peak > 0, peak, 1.0)
    return np_ops.where(peak > 0, cam / safe, 0.0), pooled


def precision_drift(bundle_dir: str | Path, reference: InferenceRunner | None = None) -> float:
    """The largest change of any class probability on the bundle's check images when
    the network runs in bfloat16 instead of float32."""
    full = reference or InferenceRunner(bundle_dir)
    half = InferenceRunner(bundle_dir, precision="bfloat16")
    images = full.check_images()
    return float(np.max(np.abs(full.predict_arrays(images) - half.predict_arrays(images))))


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
