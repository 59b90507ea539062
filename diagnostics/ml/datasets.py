"""Training data from image folders: one sub-folder per stage (or `train/`, `valid/`
sub-folders that each hold one), the stages' clinical order from `dataset.json`, the
stratified split into fit / select / report roles, and the decoding into arrays."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import IMAGE_SUFFIXES, ImageDecodeError, decode_rgb

DATASET_JSON = "dataset.json"


class DatasetError(ValueError):
    """The training folders cannot be used; the message says why in plain words."""


@dataclass
class Split:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int64
    counts: dict[str, int]
    unreadable: int


@dataclass
class Layout:
    labels: list[str]
    train_files: dict[str, list[Path]]
    valid_files: dict[str, list[Path]]
    split_method: str
    label_order_source: str
    ignored_non_image: int
    dataset_info: dict[str, Any] = field(default_factory=dict)
    # Held out from training, model selection and calibration; empty when not asked for.
    test_files: dict[str, list[Path]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- folders


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetError(f"folder {split_dir} does not exist")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _image_files(folder: Path) -> tuple[list[Path], int]:
    files, ignored = [], 0
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES:
            files.append(p)
        else:
            ignored += 1
    return files, ignored


def _read_dataset_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    labels = info.get("labels") if isinstance(info, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DatasetError(f"{path} must contain a 'labels' list of stage names")
    if len(set(labels)) != len(labels):
        raise DatasetError(f"{path} lists a stage more than once in 'labels'")
    return dict(info)


def _ordered_labels(
    folders: list[str], where: Path, dataset_json: Path | None
) -> tuple[list[str], str, dict[str, Any]]:
    if len(folders) == 0:
        raise DatasetError(f"{where} has no class sub-folders (one folder per stage expected)")
    if len(folders) == 1:
        raise DatasetError(f"{where} has only one class folder ('{folders[0]}'): training needs at least two")
    if dataset_json is None or not dataset_json.is_file():
        return folders, "alphabetical folder order (no dataset.json)", {}
    info = _read_dataset_json(dataset_json)
    labels: list[str] = info["labels"]
    if set(labels) != set(folders):
        missing = sorted(set(labels) - set(folders))
        extra = sorted(set(folders) - set(labels))
        parts = []
        if missing:
            parts.append(f"labels without a folder: {', '.join(missing)}")
        if extra:
            parts.append(f"folders not in dataset.json: {', '.join(extra)}")
        raise DatasetError(
            f"{dataset_json} labels {labels} do not match the class folders {folders} in "
            f"{where} ({'; '.join(parts)}); folder names must equal the labels exactly"
        )
    return list(labels), "dataset.json", info


def _collect(split_dir: Path, labels: list[str]) -> tuple[dict[str, list[Path]], int]:
    files: dict[str, list[Path]] = {}
    ignored = 0
    for label in labels:
        found, skipped = _image_files(split_dir / label)
        ignored += skipped
        if not found:
            raise DatasetError(f"class folder '{label}' in {split_dir} contains no images")
        files[label] = found
    return files, ignored


def _stratified_split(
    files: dict[str, list[Path]], fraction: float, seed: int, test_fraction: float = 0.0
) -> tuple[dict[str, list[Path]], dict[str, list[Path]], dict[str, list[Path]]]:
    """Per class: shuffle with `seed`, then cut test, validation and training parts, so
    every split keeps the class proportions and the same seed gives the same split."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError("the validation fraction must be between 0 and 1")
    if not 0.0 <= test_fraction < 1.0 or fraction + test_fraction >= 1.0:
        raise DatasetError("the test fraction must be at least 0 and, with the validation fraction, below 1")
    need = 3 if test_fraction > 0 else 2
    rng = np.random.default_rng(seed)
    train, valid, test = {}, {}, {}
    for label, paths in files.items():
        if len(paths) < need:
            raise DatasetError(
                f"class '{label}' has {len(paths)} image(s); at least {need} are needed to keep one "
                "for validation" + (" and one for testing" if need == 3 else "")
            )
        order = rng.permutation(len(paths))
        n_test = min(len(paths) - 2, max(1, round(len(paths) * test_fraction))) if test_fraction > 0 else 0
        n_valid = min(len(paths) - n_test - 1, max(1, round(len(paths) * fraction)))
        if n_test:
            test[label] = sorted(paths[i] for i in order[:n_test])
        valid[label] = sorted(paths[i] for i in order[n_test : n_test + n_valid])
        train[label] = sorted(paths[i] for i in order[n_test + n_valid :])
    return train, valid, test


def resolve_layout(
    *,
    data: Path | None,
    train_dir: Path | None,
    valid_dir: Path | None,
    valid_fraction: float,
    seed: int,
    test_fraction: float = 0.0,
) -> Layout:
    """Find the class folders, their clinical order and the train/valid file lists."""
    if (train_dir is None) != (valid_dir is None):
        raise DatasetError("--train-dir and --valid-dir must be given together")
    if data is None and train_dir is None:
        raise DatasetError("give --data, or --train-dir and --valid-dir")
    if data is not None and not data.is_dir():
        raise DatasetError(f"data folder {data} does not exist")

    if train_dir is None and data is not None:
        if (data / "train").is_dir() and (data / "valid").is_dir():
            train_dir, valid_dir = data / "train", data / "valid"
    dataset_json = None
    if data is not None:
        dataset_json = data / DATASET_JSON
    elif train_dir is not None:
        dataset_json = train_dir / DATASET_JSON

    if train_dir is not None and valid_dir is not None:
        if test_fraction > 0:
            raise DatasetError(
                "--test-fraction splits one folder; it cannot be combined with given train/valid folders"
            )
        folders = _class_folders(train_dir)
        labels, order_source, info = _ordered_labels(folders, train_dir, dataset_json)
        valid_folders = _class_folders(valid_dir)
        if set(valid_folders) != set(labels):
            raise DatasetError(
                f"the validation folder {valid_dir} has class folders {valid_folders}, "
                f"but the training folder has {sorted(labels)}: they must be the same"
            )
        train_files, ignored_t = _collect(train_dir, labels)
        valid_files, ignored_v = _collect(valid_dir, labels)
        return Layout(
            labels,
            train_files,
            valid_files,
            "given train/valid folders",
            order_source,
            ignored_t + ignored_v,
            info,
        )

    assert data is not None
    folders = _class_folders(data)
    labels, order_source, info = _ordered_labels(folders, data, dataset_json)
    files, ignored = _collect(data, labels)
    train_files, valid_files, test_files = _stratified_split(files, valid_fraction, seed, test_fraction)
    method = f"stratified random split, {valid_fraction:.0%} validation"
    if test_fraction > 0:
        method += f", {test_fraction:.0%} test"
    return Layout(
        labels,
        train_files,
        valid_files,
        f"{method}, seed {seed}",
        order_source,
        ignored,
        info,
        test_files,
    )


def seeded_halves(n: int, seed: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, sorted index sets covering range(n), the same for the same seed: a
    validation split without a test split is cut into a selection half (A: epoch choice,
    calibration, thresholds) and a report half (B: the figures a card states). With
    `labels`, each class is halved on its own, so both halves hold every class that has
    two or more images."""
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
        return np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    for k in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == k))
        a.append(rows[: len(rows) // 2])
        b.append(rows[len(rows) // 2 :])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def subset(split: Split, rows: np.ndarray, labels: list[str]) -> Split:
    """The rows of a split, with their per-class counts."""
    y = split.labels[rows]
    return Split(split.images[rows], y, {label: int((y == k).sum()) for k, label in enumerate(labels)}, 0)


def select_and_report(
    valid: Split, test: Split | None, *, seed: int, labels: list[str]
) -> tuple[Split, Split, dict[str, str]]:
    """The selection split (epoch choice, calibration, thresholds) and the report split
    (the figures a card states), disjoint, with a description of each: the validation
    and test splits, or, without a test split, the validation split's seeded halves A
    and B. Training, the out-of-distribution fit and `evaluate_model --report-split` all
    take their roles from here, so they agree on which image plays which."""
    if test is not None:
        roles = {
            "select": f"validation split ({len(valid.labels)} images)",
            "report": f"test split ({len(test.labels)} images)",
        }
        return valid, test, roles
    if min(valid.counts.values()) < 2:
        raise DatasetError(
            "every class needs at least two validation images: without a test split the "
            "validation split is halved into a selection half and a report half"
        )
    half_a, half_b = seeded_halves(len(valid.labels), seed, valid.labels)
    return (
        subset(valid, half_a, labels),
        subset(valid, half_b, labels),
        {
            "select": f"validation split, seeded half A ({len(half_a)} images)",
            "report": f"validation split, seeded half B ({len(half_b)} images)",
        },
    )


def _limit(files: dict[str, list[Path]], limit: int | None, seed: int) -> dict[str, list[Path]]:
    if limit is None:
        return files
    rng = np.random.default_rng(seed)
    out = {}
    for label, paths in files.items():
        if len(paths) > limit:
            keep = rng.choice(len(paths), size=limit, replace=False)
            paths = sorted(paths[i] for i in keep)
        out[label] = paths
    return out


def _decode_file(path: Path, size: int) -> np.ndarray | None:
    try:
        return decode_rgb(path.read_bytes(), size=size)
    except (ImageDecodeError, OSError):
        return None


def load_split(files: dict[str, list[Path]], labels: list[str], size: int, *, where: str) -> Split:
    """Decode every image into memory; unreadable files are skipped and counted."""
    paths = [p for label in labels for p in files[label]]
    targets = [k for k, label in enumerate(labels) for _ in files[label]]
    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(pool.map(lambda p: _decode_file(p, size), paths))
    keep = [i for i, arr in enumerate(decoded) if arr is not None]
    images = np.zeros((len(keep), size, size, 3), dtype=np.uint8)
    for j, i in enumerate(keep):
        images[j] = decoded[i]  # type: ignore[assignment]  # keep holds only decoded (non-None) images
    y = np.asarray([targets[i] for i in keep], dtype=np.int64)
    counts = {label: int((y == k).sum()) for k, label in enumerate(labels)}
    for label, n in counts.items():
        if n == 0:
            raise DatasetError(f"class '{label}' has no readable images in the {where} split")
    return Split(images, y, counts, len(paths) - len(keep))
