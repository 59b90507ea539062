"""Build a model bundle with RANDOM weights for benchmarks (nothing is downloaded):
an ImageNet-sized network at its usual input size, so the worker path can be timed on
a model whose compute resembles a production one. Not for predictions. The bundle is
large (EfficientNetB0: ~16 MB) and is not committed; it goes to /tmp by default.

    .venv/bin/python bench/make_random_bundle.py [--backbone efficientnetb0] [--size 224] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    from diagnostics.ml.bundle import Manifest, sha256_file, write_manifest
    from diagnostics.ml.models import BACKBONES, build_model
    from diagnostics.ml.preprocess import PREPROCESSING_ID
    from diagnostics.ml.train import library_versions

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnetb0", choices=sorted(BACKBONES))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--labels", default="no-metastasis,metastasis")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    labels = a.labels.split(",")
    out = a.out or Path(tempfile.gettempdir()) / f"cancerweb-bench-{a.backbone}-{a.size}"
    out.mkdir(parents=True, exist_ok=True)
    import keras

    keras.utils.set_random_seed(0)
    model = build_model(a.backbone, a.size, len(labels))
    model.save(out / "model.keras")
    manifest = Manifest(
        name=f"bench-{a.backbone}",
        version=f"random-{a.size}",
        task=f"benchmark only ({a.backbone}, random weights)",
        labels=labels,
        input_size=a.size,
        preprocessing=PREPROCESSING_ID,
        temperature=1.0,
        uncertain_below=0.6,
        metrics={"note": "random weights: for timing only"},
        data_summary={},
        model_file="model.keras",
        model_sha256=sha256_file(out / "model.keras"),
        library_versions=library_versions(),
    )
    write_manifest(out, manifest)
    size_mb = (out / "model.keras").stat().st_size / 1e6
    print(f"wrote {out} ({a.backbone} {a.size}px, {model.count_params():,} parameters, {size_mb:.1f} MB)")


if __name__ == "__main__":
    main()
