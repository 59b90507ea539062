"""Group convolutions over the 90-degree rotations and mirror images (`--backbone
small_p4m_cnn`, diagnostics/ml/equivariant.py): the layers turn their output with the
input, the network gives the same logits for a patch and its 7 transforms (an ordinary
CNN does not), the bundle saves, loads and runs through the runner on both backends, and
the options that make no sense with it are refused before anything is read."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from diagnostics.ml.datasets import DatasetError
from diagnostics.ml.runner import InferenceRunner
from diagnostics.ml.train import TrainConfig, train_bundle

from .conftest import REPO


def _transform(k: int, mirror: bool) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.rot90(a[:, :, ::-1] if mirror else a, k, axes=(1, 2))


# The 8 transforms of an (N, H, W, C) batch: the 4 rotations, and each after a mirror.
TRANSFORMS = [_transform(k, m) for m in (False, True) for k in range(4)]


def _batch(seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (3, size, size, 3)).astype(np.float32)


def test_the_group_layers_turn_their_output_with_the_input() -> None:
    import keras

    from diagnostics.ml.equivariant import D4Conv2D, D4Pool, group_batch_norm

    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    x = D4Conv2D(4, lifting=True)(inputs)
    x = group_batch_norm(x, name="bn")
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = D4Conv2D(5)(x)
    maps = D4Pool()(x)
    model = keras.Model(inputs, [x, maps])
    assert model.output_shape == [(None, 8, 8, 40), (None, 8, 8, 5)]
    x0 = _batch(1, 16) / 255.0
    stack, pooled = (np.asarray(t) for t in model(x0, training=False))
    for i, transform in enumerate(TRANSFORMS):
        t_stack, t_pooled = (np.asarray(t) for t in model(np.ascontiguousarray(transform(x0)), training=False))
        # The pooled map turns with the input ...
        assert np.abs(t_pooled - transform(pooled)).max() < 1e-4, f"transform {i}"
        # ... and the stack's 8 oriented copies of each map are the same maps, turned and
        # in another order: every turned copy is found among the transformed input's.
        copies = transform(stack).reshape(3, 8, 8, 8, 5)
        t_copies = t_stack.reshape(3, 8, 8, 8, 5)
        for g in range(8):
            assert min(np.abs(t_copies[..., h, :] - copies[..., g, :]).max() for h in range(8)) < 1e-4
        if i:  # not the identity: the stack really moves
            assert np.abs(t_stack - stack).max() > 1e-2


def test_the_p4m_network_gives_the_same_logits_for_a_patch_and_its_seven_transforms() -> None:
    import keras

    from diagnostics.ml.models import build_model

    keras.utils.set_random_seed(4)
    x0 = _batch(2, 32)
    for backbone, invariant in (("small_p4m_cnn", True), ("small_cnn", False)):
        model = build_model(backbone, 32, 3)
        logits = np.asarray(model(x0, training=False))
        worst = max(
            np.abs(np.asarray(model(np.ascontiguousarray(t(x0)), training=False)) - logits).max() for t in TRANSFORMS
        )
        # The test can tell: the ordinary CNN's logits move when its input turns.
        assert bool(worst < 1e-4) is invariant, f"{backbone}: largest change {worst}"


def test_a_kernel_size_or_input_size_the_group_cannot_use_is_refused() -> None:
    from diagnostics.ml.equivariant import kernel_index
    from diagnostics.ml.models import build_model

    with pytest.raises(ValueError, match="odd kernel size"):
        kernel_index(2, 3, 4, lifting=True)
    with pytest.raises(ValueError, match="not a stack of 8 groups"):
        kernel_index(3, 12, 4, lifting=False)
    with pytest.raises(ValueError, match="divisible by 16"):
        build_model("small_p4m_cnn", 40, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tta": "dihedral8"}, "--tta dihedral8 is pointless with --backbone small_p4m_cnn"),
        ({"tta": "flip-lr"}, "--tta flip-lr is pointless"),
        ({"image_size": 40}, "needs an --image-size divisible by 16"),
    ],
)
def test_options_that_make_no_sense_with_the_p4m_network_stop_before_anything_is_written(
    synthetic_data: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    out = tmp_path / "never"
    config = TrainConfig(data=synthetic_data, out=out, name="t", version="1", epochs=1, image_size=32, verbose=0)
    config.backbone = "small_p4m_cnn"
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(DatasetError, match=message):
        train_bundle(config)
    assert not out.exists()


JAX_SCRIPT = """
import sys
import numpy as np
from diagnostics.ml.runner import InferenceRunner
runner = InferenceRunner(sys.argv[1])
out = runner.run(np.load(sys.argv[2]), heatmaps=True)
np.savez(sys.argv[3], p=out.probabilities, h=out.heatmaps, backend=runner.backend)
"""


def test_a_trained_p4m_bundle_answers_the_same_for_every_turn_on_both_backends(
    synthetic_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "p4m"
    config = TrainConfig(
        data=synthetic_data,
        out=out,
        name="toy",
        version="0.5",
        epochs=2,
        image_size=64,
        batch_size=8,
        test_fraction=0.25,
        backbone="small_p4m_cnn",
        colour_augmentation="hed",
        check_images=1,
        verbose=0,
    )
    manifest = train_bundle(config)
    training = manifest.metrics["training"]
    assert training["backbone"] == "small_p4m_cnn" and "p4m" in training["architecture"]
    assert "Architecture: group convolutions over the 8 rotations" in (out / "MODEL_CARD.md").read_text()
    # Loaded from the .keras file by the runner (the layers are registered, safe mode on).
    runner = InferenceRunner(out)
    x = np.random.default_rng(8).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    base = runner.run(x, heatmaps=True)
    assert base.heatmaps is not None and base.heatmaps.shape == (2, 4, 4)
    assert base.features is not None and base.features.shape == (2, 48)
    for transform in TRANSFORMS:
        turned = runner.run(np.ascontiguousarray(transform(x)), heatmaps=True)
        assert np.abs(turned.probabilities - base.probabilities).max() < 1e-5
        assert turned.heatmaps is not None
        # Grad-CAM's map turns with the patch (its input is the orientation-pooled map).
        assert np.abs(turned.heatmaps - transform(base.heatmaps[..., None])[..., 0]).max() < 1e-3
    # bfloat16 builds from the same layers and stays close.
    half = InferenceRunner(out, precision="bfloat16")
    assert np.abs(half.predict_arrays(x) - runner.predict_arrays(x)).max() < 0.05
    # JAX (the GPU hosts' backend) loads the same file and gives the same answers.
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", JAX_SCRIPT, str(out), str(tmp_path / "x.npy"), str(tmp_path / "jax.npz")]
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jax = np.load(tmp_path / "jax.npz")
    assert str(jax["backend"]) == "jax"
    assert np.abs(jax["p"] - base.probabilities).max() < 1e-4
    assert np.abs(jax["h"] - base.heatmaps).max() < 1e-3
