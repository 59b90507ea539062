"""One bundle, two Keras backends: TensorFlow (the CPU hosts) and JAX (the GPU hosts),
both on this machine's CPU. The backend is chosen when Keras is imported, so each runs
in its own process; they must agree on probabilities and heat maps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import DEMO_BUNDLE, PCAM, REPO

SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from diagnostics.ml.runner import InferenceRunner, precision_drift
runner = InferenceRunner(sys.argv[1])
files = [Path(p) for p in sys.argv[3:]]
x = np.stack([runner.preprocess(f.read_bytes()) for f in files])
out = runner.run(x, heatmaps=True)
drift = precision_drift(sys.argv[1], reference=runner) if runner.backend == "tensorflow" else -1.0
np.savez(sys.argv[2], p=out.probabilities, h=out.heatmaps, f=out.features, logits=out.logits,
         bare=runner.bare_call(x), backend=runner.backend, device=runner.device, drift=drift)
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    files = (
        sorted((PCAM / "valid" / "metastasis").iterdir())[:3] + sorted((PCAM / "valid" / "no-metastasis").iterdir())[:3]
    )
    out_dir = tmp_path_factory.mktemp("backends")
    procs = {}
    for backend in ("tensorflow", "jax"):
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
        target = out_dir / f"{backend}.npz"
        args = [sys.executable, "-c", SCRIPT, str(DEMO_BUNDLE), str(target), *map(str, files)]
        procs[backend] = (subprocess.Popen(args, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True), target)
    results = {}
    for backend, (proc, target) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{backend} run failed: {err[-2000:]}"
        results[backend] = dict(np.load(target))
    return results


def test_the_bundle_gives_the_same_outputs_under_tensorflow_and_jax(outputs: dict[str, dict[str, np.ndarray]]) -> None:
    tf, jax = outputs["tensorflow"], outputs["jax"]
    assert str(tf["backend"]) == "tensorflow" and str(jax["backend"]) == "jax"
    assert str(jax["device"]) == "cpu"  # no GPU here: the JAX runner says so and runs on CPU
    assert tf["p"].shape == (6, 2) and tf["h"].shape == jax["h"].shape == (6, 6, 6)
    assert np.abs(tf["p"] - jax["p"]).max() < 1e-4
    assert np.abs(tf["h"] - jax["h"]).max() < 1e-3
    assert np.abs(tf["f"] - jax["f"]).max() < 1e-3
    # Real maps, not zeros: each has its peak scaled to 1 (unless the ReLU left nothing).
    assert np.isclose(tf["h"].reshape(6, -1).max(axis=1), 1.0).sum() >= 5
    # The network's own classes differ across these six images: the check is not trivial.
    assert len(set(tf["p"].argmax(axis=1))) == 2
    # The call with heat maps and the bare call give the same logits on each backend.
    for out in (tf, jax):
        assert np.abs(out["logits"] - out["bare"]).max() < 1e-4


def test_bfloat16_drift_on_the_check_images_is_measured_and_small(outputs: dict[str, dict[str, np.ndarray]]) -> None:
    from diagnostics.ml.runner import BFLOAT16_TOLERANCE

    drift = float(outputs["tensorflow"]["drift"])
    assert 0.0 < drift < BFLOAT16_TOLERANCE  # bfloat16 changes something, within the stated bound


def test_check_images_come_from_the_bundle_when_it_has_them(tmp_path: Path) -> None:
    import shutil

    from diagnostics.ml.runner import CHECK_IMAGES_DIR, InferenceRunner

    assert len(InferenceRunner(DEMO_BUNDLE).check_images()) == 8  # the demo bundle's own real patches
    bundle = tmp_path / "demo"
    shutil.copytree(DEMO_BUNDLE, bundle)
    shutil.rmtree(bundle / CHECK_IMAGES_DIR, ignore_errors=True)
    bare = tmp_path / "bare"
    shutil.copytree(bundle, bare)
    (bundle / CHECK_IMAGES_DIR).mkdir()
    for f in sorted((PCAM / "valid" / "metastasis").iterdir())[:2]:
        shutil.copy(f, bundle / CHECK_IMAGES_DIR / f.name)
    runner = InferenceRunner(bundle)
    images = runner.check_images()
    assert images.shape == (2, 96, 96, 3)
    synthetic = InferenceRunner(bare).check_images()
    assert synthetic.shape == (8, 96, 96, 3) and len({a.tobytes() for a in synthetic}) == 8
