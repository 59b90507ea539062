"""A candidate version of the demo lymph-node model, made without Keras: the same
network with the last layer's bias for "metastasis" raised, so it says "metastasis"
more readily and its probabilities differ from the active version's on every image."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np

from diagnostics.ml.bundle import sha256_file

REPO_DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-pcam"
NAME, VERSION = "pcam-candidate", "2.0.0-shadow"


def make_candidate_bundle(out: Path, *, bias_shift: float = 1.5, kernel_noise: float = 0.0, seed: int = 0) -> Path:
    """``bias_shift`` moves every answer towards "metastasis" (same ranking of cases);
    ``kernel_noise`` (relative to the kernel's spread) also reorders them."""
    out.mkdir(parents=True)
    # The features are the active version's (only the last layer changes): its
    # out-of-distribution reference holds for the candidate too.
    for name in ("manifest.json", "MODEL_CARD.md", "ood_reference.npz"):
        shutil.copy(REPO_DEMO / name, out / name)
    with zipfile.ZipFile(REPO_DEMO / "model.keras") as src, zipfile.ZipFile(out / "model.keras", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as weights:
                    bias = weights["layers/dense/vars/1"]
                    bias[...] = np.asarray(bias) + np.array([0.0, bias_shift], dtype=bias.dtype)
                    kernel = weights["layers/dense/vars/0"]
                    values = np.asarray(kernel)
                    noise = np.random.default_rng(seed).normal(0.0, kernel_noise * values.std(), values.shape)
                    kernel[...] = values + noise.astype(values.dtype)
                data = buffer.getvalue()
            dst.writestr(info, data)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(name=NAME, version=VERSION, model_sha256=sha256_file(out / "model.keras"))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
