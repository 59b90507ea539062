"""Evaluate a model bundle on a labelled folder: metrics.json, PNG plots (confusion
matrix, one-vs-rest ROC curves, reliability diagram) and a Markdown report.

The folder holds one sub-folder per stage, named exactly as the model's labels. The
probabilities evaluated are the calibrated ones the application shows (the bundle's
calibration and test-time views applied), so the report describes what a reviewer sees.

With `report_split=True` the folder is the bundle's training data folder instead, and
the images evaluated are the bundle's report split, re-derived from its manifest (the
split fractions and seed of its training run): the test split, or the validation
split's seeded half B. Every figure then carries a 95 % bootstrap interval.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from . import metrics as M  # noqa: E402
from .preprocess import IMAGE_SUFFIXES, ImageDecodeError, decode_rgb  # noqa: E402

N_BINS = 15


class EvaluationError(ValueError):
    """The folder cannot be evaluated against this model; the message says why."""


def collect_folder(folder: Path, labels: list[str]) -> tuple[list[Path], list[int]]:
    """Image paths and label indices; folder names must be the model's labels."""
    if not folder.is_dir():
        raise EvaluationError(f"folder {folder} does not exist")
    subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    unknown = [d for d in subdirs if d not in labels]
    if unknown:
        raise EvaluationError(
            f"folder(s) {', '.join(unknown)} in {folder} are not labels of this model "
            f"(its labels: {', '.join(labels)}); rename or remove them"
        )
    missing = [label for label in labels if label not in subdirs]
    if missing:
        raise EvaluationError(
            f"no folder for label(s) {', '.join(missing)} in {folder}: every stage is needed for ROC AUC"
        )
    paths: list[Path] = []
    targets: list[int] = []
    for k, label in enumerate(labels):
        files = sorted(p for p in (folder / label).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise EvaluationError(f"folder '{label}' in {folder} contains no images")
        paths += files
        targets += [k] * len(files)
    return paths, targets


def evaluation_metrics(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The metrics of metrics.json, from calibrated probabilities."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    n = len(labels)
    pred = p.argmax(axis=1)
    prf = M.per_class_prf(y, pred, n)
    roc_per_class = {labels[k]: M.roc_auc_binary(y == k, p[:, k]) for k in range(n)}
    return {
        "labels": list(labels),
        "n": int(y.size),
        "accuracy": M.accuracy(y, pred),
        "balanced_accuracy": M.balanced_accuracy(y, pred, n),
        "roc_auc": float(np.mean(list(roc_per_class.values()))) if n > 2 else M.roc_auc(y, p),
        "roc_auc_average": "macro one-vs-rest" if n > 2 else "binary (last label positive)",
        "roc_auc_per_class": roc_per_class,
        "ece": M.expected_calibration_error(y, p, N_BINS),
        "ece_bins": N_BINS,
        "nll": M.nll(y, p),
        "per_class": M.per_class_table(prf, labels),
        "confusion_matrix": M.confusion_matrix(y, pred, n).tolist(),
    }


def _roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="stable")
    y = y[order].astype(np.float64)
    tps = np.concatenate([[0.0], np.cumsum(y)])
    fps = np.concatenate([[0.0], np.cumsum(1.0 - y)])
    return fps / max(fps[-1], 1.0), tps / max(tps[-1], 1.0)


def write_plots(y: np.ndarray, probs: np.ndarray, labels: list[str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    names = []
    cm = M.confusion_matrix(y, probs.argmax(axis=1), len(labels))
    fig, ax = plt.subplots(figsize=(4 + 0.6 * len(labels), 3.5 + 0.6 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=110)
    plt.close(fig)
    names.append("confusion_matrix.png")

    fig, ax = plt.subplots(figsize=(5, 5))
    for k, label in enumerate(labels):
        if len(labels) == 2 and k == 0:
            continue
        fpr, tpr = _roc_curve(y == k, probs[:, k])
        ax.plot(fpr, tpr, label=f"{label} (AUC {M.roc_auc_binary(y == k, probs[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC, one vs rest")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc_curves.png", dpi=110)
    plt.close(fig)
    names.append("roc_curves.png")

    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.clip(np.ceil(conf * N_BINS).astype(int) - 1, 0, N_BINS - 1)
    centers, accs, counts = [], [], []
    for b in range(N_BINS):
        mask = bins == b
        if mask.any():
            centers.append(float(conf[mask].mean()))
            accs.append(float(correct[mask].mean()))
            counts.append(int(mask.sum()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect calibration")
    ax.plot(centers, accs, "o-", label="model")
    for c, a, n in zip(centers, accs, counts, strict=True):
        ax.annotate(str(n), (c, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("mean top-class probability (bin)")
    ax.set_ylabel("accuracy (bin)")
    ax.set_title(f"Reliability diagram, ECE {M.expected_calibration_error(y, probs, N_BINS):.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)
    names.append("reliability.png")
    return names


def render_report(result: dict[str, Any], *, model: str, folder: str, plots: list[str]) -> str:
    labels = result["labels"]
    rows = "\n".join(
        f"| {label} | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} | {s['support']} |"
        for label, s in result["per_class"].items()
    )
    cm_rows = "\n".join(
        f"| {label} | " + " | ".join(str(c) for c in row) + " |"
        for label, row in zip(labels, result["confusion_matrix"], strict=True)
    )
    images = "\n".join(f"![{p}]({p})" for p in plots)
    ci = result.get("ci95") or {}

    def interval(key: str) -> str:
        return f" ({ci[key][0]:.4f} to {ci[key][1]:.4f})" if key in ci else ""

    ci_note = f" Brackets: 95 % interval, {M.BOOTSTRAP_METHOD}." if ci else ""
    return f"""# Evaluation of {model}

Folder: `{folder}` ({result["n"]} images, {result["unreadable"]} unreadable and skipped).
Probabilities are calibrated as the application shows them ({result["calibration"]}; test-time views: \
`{result["tta"]}`).{ci_note}

| metric | value |
|---|---|
| accuracy | {result["accuracy"]:.4f}{interval("accuracy")} |
| balanced accuracy | {result["balanced_accuracy"]:.4f}{interval("balanced_accuracy")} |
| ROC AUC ({result["roc_auc_average"]}) | {result["roc_auc"]:.4f}{interval("roc_auc")} |
| ECE ({result["ece_bins"]} bins) | {result["ece"]:.4f}{interval("ece")} |
| NLL | {result["nll"]:.4f} |

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Confusion matrix (rows: true, columns: predicted):

| true \\ predicted | {" | ".join(labels)} |
{"|---" * (len(labels) + 1)}|
{cm_rows}

{images}

Measured figures on this folder only; not clinical validation.
"""


def report_split_images(manifest: Any, data: Path) -> tuple[np.ndarray, np.ndarray, int, str]:
    """The bundle's report split re-derived from its training data folder: images,
    labels, unreadable count and a description."""
    from .datasets import DatasetError, _limit, load_split, resolve_layout, select_and_report

    training = manifest.metrics.get("training", {})
    options = training.get("options")
    if not options or "report" not in manifest.metrics:
        raise EvaluationError("this bundle records no report split (it predates the three data roles)")
    try:
        layout = resolve_layout(
            data=data,
            train_dir=None,
            valid_dir=None,
            valid_fraction=options["valid_fraction"],
            seed=training["seed"],
            test_fraction=options["test_fraction"],
        )
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from exc
    if layout.labels != manifest.labels:
        raise EvaluationError(f"the folder's classes {layout.labels} are not the bundle's {manifest.labels}")
    size, seed = manifest.input_size, training["seed"]
    test = load_split(layout.test_files, layout.labels, size, where="test") if layout.test_files else None
    limit = manifest.data_summary.get("limit_per_class")
    valid = load_split(_limit(layout.valid_files, limit, seed + 1), layout.labels, size, where="valid")
    _, report, roles = select_and_report(valid, test, seed=seed, labels=layout.labels)
    unreadable = test.unreadable if test is not None else valid.unreadable
    return report.images, report.labels, unreadable, f"its {roles['report']}"


def evaluate_bundle(
    bundle_dir: str | Path,
    folder: str | Path,
    out: str | Path,
    *,
    batch_size: int = 32,
    report_split: bool = False,
) -> dict[str, Any]:
    """Run the bundle over the folder (or, with `report_split`, over the bundle's report
    split of that training-data folder) and write metrics.json, plots and report.md."""
    from .calibration import describe as describe_calibration
    from .runner import InferenceRunner

    runner = InferenceRunner(bundle_dir)  # verifies the bundle's hash
    labels = runner.labels
    arrays: list[np.ndarray] = []
    ys: list[int] = []
    unreadable = 0
    where = str(folder)
    if report_split:
        images, y_split, unreadable, what = report_split_images(runner.manifest, Path(folder))
        arrays, ys = list(images), [int(k) for k in y_split]
        where = f"{folder}: {what} (used for neither training, epoch choice nor calibration)"
    else:
        paths, targets = collect_folder(Path(folder), labels)
        for path, k in zip(paths, targets, strict=True):
            try:
                arrays.append(decode_rgb(path.read_bytes(), size=runner.input_size))
                ys.append(k)
            except (ImageDecodeError, OSError):
                unreadable += 1
    y = np.asarray(ys, dtype=np.int64)
    for k, label in enumerate(labels):
        if not (y == k).any():
            raise EvaluationError(f"no readable image for label '{label}'")
    probs = np.concatenate(
        [runner.predict_arrays(np.stack(arrays[i : i + batch_size])) for i in range(0, len(arrays), batch_size)]
    )
    result = evaluation_metrics(y, probs, labels)
    result["unreadable"] = unreadable
    result["model"] = f"{runner.manifest.name} {runner.manifest.version}"
    result["model_sha256"] = runner.manifest.model_sha256
    result["temperature"] = runner.manifest.temperature
    result["calibration"] = describe_calibration(runner.manifest.calibration, runner.manifest.temperature)
    result["tta"] = runner.manifest.tta
    if report_split:
        result["split"] = where
        result["ci95"] = M.bootstrap_intervals(y, probs, seed=0)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = write_plots(y, probs, labels, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(
        render_report(result, model=result["model"], folder=where, plots=plots), encoding="utf-8"
    )
    return result
