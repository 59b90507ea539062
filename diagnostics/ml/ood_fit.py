"""Give a bundle its out-of-distribution reference, and measure it.

    python -m diagnostics.ml.ood_fit --bundle models/demo-pcam --data ../shared/data/pcam \\
        --outliers ../shared/data/busi

Three disjoint roles, as on a model card:

- **fit**: the training split (the images the network learnt from) gives the class
  means and the shared covariance of the penultimate features;
- **select**: held-out own-task images choose the threshold (at most MAX_INLIER_RATE of
  them flagged) and the image checks' blank limit; the validation split, or its first
  half when the bundle has no test split;
- **report**: own-task images used for neither (the test split, or the validation
  split's other half) and outlier images apart from those seen in selection: the
  rates the manifest and the model card state.

Outliers are other tasks' images (`--outliers`, class folders of any task) and seeded
synthetic non-tissue (flat colours, ramps, noise, stripes). The split of `--data` must
be the one the bundle was trained with (`--valid-fraction`, `--test-fraction`,
`--seed` as in its manifest's split method). Writes `ood_reference.npz` and the
manifest's `ood` field; the model file and its SHA-256 are untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from . import ood  # noqa: E402
from .bundle import BundleError, sha256_file, verify_bundle, write_manifest  # noqa: E402
from .card import MODEL_CARD, card_with_ood_section, render_model_card
from .datasets import (  # noqa: E402
    DatasetError,
    _class_folders,
    _collect,
    _limit,
    load_split,
    resolve_layout,
    seeded_halves,
    select_and_report,
)

BATCH = 64
REFERENCE_SCORES = 500


def _features(runner: Any, images: np.ndarray) -> np.ndarray:
    parts = [runner.run(images[i : i + BATCH], heatmaps=True).features for i in range(0, len(images), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _subsample(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if limit is None or len(images) <= limit:
        return images, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return images[keep], labels[keep]


def _outlier_images(folders: Sequence[Path], size: int, limit: int, seed: int) -> np.ndarray:
    """Every image of the other tasks' class folders (train/valid layouts included),
    decoded at the model's input size; up to `limit`, seeded."""
    arrays = []
    for folder in folders:
        roots = [folder / s for s in ("train", "valid", "test") if (folder / s).is_dir()] or [folder]
        for root in roots:
            labels = _class_folders(root)
            files, _ = _collect(root, labels)
            arrays.append(load_split(files, labels, size, where=f"outlier {root}").images)
    images = np.concatenate(arrays)
    keep = np.sort(np.random.default_rng(seed).choice(len(images), size=min(limit, len(images)), replace=False))
    return images[keep]


def _flagged(scores: tuple[np.ndarray, np.ndarray], images: np.ndarray, section: dict[str, Any]) -> np.ndarray:
    """Which of the images the product flags (the original size is not known here:
    images at the input size pass the size check)."""
    s = images.shape[1] if images.ndim == 4 else 0
    return np.array(
        [
            bool(ood.reasons(width=s, height=s, image=im, feature_score=f, image_score=i, section=section))
            for im, f, i in zip(images, scores[0], scores[1], strict=True)
        ],
        dtype=bool,
    )


def fit_bundle(
    *,
    bundle: Path,
    data: Path,
    outliers: Sequence[Path],
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    fit_limit: int | None,
    outlier_limit: int,
    limit_per_class: int | None = None,
) -> dict[str, Any]:
    from .runner import InferenceRunner

    started = time.monotonic()
    manifest = verify_bundle(bundle)
    runner = InferenceRunner(bundle)
    size = manifest.input_size
    layout = resolve_layout(
        data=data, train_dir=None, valid_dir=None, valid_fraction=valid_fraction, seed=seed, test_fraction=test_fraction
    )
    if layout.labels != manifest.labels:
        raise ood.OodError(f"the data's classes {layout.labels} are not the bundle's {manifest.labels}")
    # The same images the training run used (its --limit-per-class, same seed).
    train = load_split(_limit(layout.train_files, limit_per_class, seed), layout.labels, size, where="train")
    valid = load_split(_limit(layout.valid_files, limit_per_class, seed + 1), layout.labels, size, where="valid")
    fit_x, fit_y = _subsample(train.images, train.labels, fit_limit, seed)
    test = load_split(layout.test_files, layout.labels, size, where="test") if layout.test_files else None
    select, report, roles = select_and_report(valid, test, seed=seed, labels=layout.labels)
    select_x, report_x = select.images, report.images

    references = ood.References(
        features=ood.fit_reference(_features(runner, fit_x), fit_y, len(layout.labels)),
        images=ood.fit_reference(ood.image_statistics(fit_x), np.zeros(len(fit_x), np.int64), 1),
    )

    def distances(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(images):
            return np.zeros(0), np.zeros(0)
        return references.features.scores(_features(runner, images)), references.images.scores(
            ood.image_statistics(images)
        )

    select_scores, report_scores = distances(select_x), distances(report_x)
    # The blank limit: under the default, and under every selection image but the darkest
    # 0.5 % (some tissue patches are mostly empty glass).
    stds = np.array([ood.grey_std(im) for im in select_x])
    section: dict[str, Any] = {
        "method": ood.METHOD,
        "file": ood.OOD_FILE,
        "threshold": ood.choose_threshold(select_scores[0]),
        "image_threshold": ood.choose_threshold(select_scores[1]),
        "max_inlier_rate": ood.MAX_INLIER_RATE,
        "min_side": max(16, size // 2),
        "min_std": round(float(min(ood.DEFAULT_MIN_STD, np.quantile(stds, 0.005))), 3),
    }

    others = np.zeros((0, size, size, 3), np.uint8)
    if outliers:
        others = _outlier_images(outliers, size, outlier_limit, seed)
    synthetic = ood.synthetic_outliers(200, size, seed)
    o_a, o_b = seeded_halves(len(others), seed + 1)
    s_a, s_b = seeded_halves(len(synthetic), seed + 2)
    other_scores, synth_scores = distances(others), distances(synthetic)

    def rate(scores: tuple[np.ndarray, np.ndarray], images: np.ndarray, rows: Any = slice(None)) -> float | None:
        picked = images[rows]
        if not len(picked):
            return None
        return float(_flagged((scores[0][rows], scores[1][rows]), picked, section).mean())

    section["measured"] = {
        "roles": {"fit": f"training split ({len(fit_x)} images)", **roles},
        "own_select_flagged": rate(select_scores, select_x),
        "own_report_flagged": rate(report_scores, report_x),
        "own_report_n": len(report_x),
        "other_tasks": [str(p.name) for p in outliers],
        "other_select_flagged": rate(other_scores, others, o_a),
        "other_report_flagged": rate(other_scores, others, o_b),
        "other_report_n": len(o_b),
        "synthetic_select_flagged": rate(synth_scores, synthetic, s_a),
        "synthetic_report_flagged": rate(synth_scores, synthetic, s_b),
        "synthetic_report_n": len(s_b),
        "fit_seconds": round(time.monotonic() - started, 1),
    }
    ref_path = bundle / ood.OOD_FILE
    tmp = ref_path.with_name(ood.OOD_FILE + ".tmp")
    tmp.write_bytes(references.to_bytes())
    tmp.replace(ref_path)
    section["sha256"] = sha256_file(ref_path)
    picked = np.random.default_rng(seed).permutation(len(select_scores[0]))[:REFERENCE_SCORES]
    # Held-out own-task feature distances: the drift check's reference for the features.
    section["reference_scores"] = [round(float(x), 4) for x in np.sort(select_scores[0][picked])]
    updated = replace(manifest, ood=section)
    write_manifest(bundle, updated)
    card = bundle / MODEL_CARD
    text = card.read_text(encoding="utf-8") if card.is_file() else render_model_card(updated)
    card.write_text(card_with_ood_section(text, updated), encoding="utf-8")
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the bundle's training data (class folders)")
    parser.add_argument("--outliers", type=Path, nargs="*", default=[], help="other tasks' data folders")
    parser.add_argument("--valid-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fit-limit", type=int, default=6000, help="training images the reference is fitted on")
    parser.add_argument("--outlier-limit", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        section = fit_bundle(
            bundle=args.bundle,
            data=args.data,
            outliers=args.outliers,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            fit_limit=args.fit_limit,
            outlier_limit=args.outlier_limit,
        )
    except (DatasetError, BundleError, ood.OodError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in section.items() if k != "reference_scores"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
