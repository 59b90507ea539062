"""Evaluation of the slide path against per-cell ground truth (the JSON beside each
slide made by make_slide.py): slide-level accuracy and ROC AUC, tumour localisation
(sensitivity at 1 and 4 false-positive tiles per slide, Dice). No Django imports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import roc_auc_binary
from .slides import SlideAnalysis, SlideMethod, aggregate, analyse, dice, sensitivity_at_fp, truth_grid

SLIDE_SUFFIXES = (".tiff", ".tif", ".svs", ".ndpi", ".dcm", ".scn", ".bif")


@dataclass
class SlideCase:
    name: str
    truth: dict[str, Any]
    analysis: SlideAnalysis
    truth_tissue: np.ndarray
    truth_tumour: np.ndarray

    @property
    def positive(self) -> bool:
        return bool(self.truth["label"] != self.truth["labels"][0])


def slide_files(folder: str | Path) -> list[tuple[Path, Path]]:
    """(slide, ground-truth JSON) pairs of a folder, by name."""
    out = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in SLIDE_SUFFIXES and path.with_suffix(".json").is_file():
            out.append((path, path.with_suffix(".json")))
    return out


def run_folder(
    folder: str | Path,
    *,
    predict: Any,
    model_mpp: float,
    input_size: int,
    labels: list[str],
    method: SlideMethod,
    batch_size: int = 64,
    threads: int = 3,
) -> list[SlideCase]:
    import openslide

    cases = []
    for path, truth_path in slide_files(folder):
        truth = json.loads(truth_path.read_text())
        slide = openslide.OpenSlide(str(path))
        try:
            mpp = float(slide.properties.get(openslide.PROPERTY_NAME_MPP_X, truth.get("mpp", 0)))
            analysis = analyse(
                slide,
                slide_mpp=mpp,
                model_mpp=model_mpp,
                input_size=input_size,
                labels=labels,
                predict=predict,
                method=method,
                batch_size=batch_size,
                threads=threads,
            )
        finally:
            slide.close()
        t_tissue, t_tumour = truth_grid(truth, analysis.grid, mpp)
        cases.append(SlideCase(path.name, truth, analysis, t_tissue, t_tumour))
    return cases


def reaggregate(cases: list[SlideCase], method: SlideMethod) -> list[SlideCase]:
    """The same tile probabilities under another slide-level method (for tuning)."""
    out = []
    for c in cases:
        a = c.analysis
        agg = aggregate(a.probabilities, a.tissue, a.grid, method)
        analysis = SlideAnalysis(
            a.grid, a.labels, a.tissue, a.probabilities, agg.slide_probabilities, agg.regions, agg.tumour, agg.score,
            agg.evidence, method, a.seconds, a.outside,
        )  # fmt: skip
        out.append(SlideCase(c.name, c.truth, analysis, c.truth_tissue, c.truth_tumour))
    return out


def metrics(cases: list[SlideCase]) -> dict[str, Any]:
    y = np.array([c.positive for c in cases], bool)
    p_pos = np.array([1.0 - c.analysis.slide_probabilities[0] for c in cases])
    predicted = [c.analysis.labels[int(np.argmax(c.analysis.slide_probabilities))] for c in cases]
    correct = [pred == c.truth["label"] for pred, c in zip(predicted, cases, strict=True)]
    both = bool(y.any() and (~y).any())
    masks = [c.analysis.tissue | c.truth_tissue for c in cases]
    scores = [c.analysis.score for c in cases]
    truths = [c.truth_tumour for c in cases]
    per_slide = []
    for c, pred, ok, mask in zip(cases, predicted, correct, masks, strict=True):
        a = c.analysis
        tp = int((a.tumour & c.truth_tumour).sum())
        per_slide.append(
            {
                "slide": c.name,
                "truth": c.truth["label"],
                "predicted": pred,
                "correct": ok,
                "p_positive": round(1.0 - a.slide_probabilities[0], 4),
                "evidence": round(a.evidence[0], 3) if a.evidence else 0.0,
                "tissue_tiles": a.tissue_tiles,
                "outside_tiles": a.outside_tiles,
                "truth_tissue_cells": int(c.truth_tissue.sum()),
                "tissue_agreement": round(float((a.tissue == c.truth_tissue).mean()), 4),
                "truth_tumour_cells": int(c.truth_tumour.sum()),
                "tiles_above_0.5": int(((np.nan_to_num(a.probabilities[..., 1:].sum(-1)) >= 0.5) & a.tissue).sum()),
                "predicted_tumour_tiles": int(a.tumour.sum()),
                "true_positive_tiles": tp,
                "false_positive_tiles": int((a.tumour & ~c.truth_tumour).sum()),
                "dice": round(dice([a.tumour], [c.truth_tumour]), 4),
                "regions": len(a.regions),
                "seconds": round(sum(v for k, v in a.seconds.items() if k != "network"), 2),
                "tiles_per_second": round(a.tissue_tiles / max(a.seconds.get("tiles", 0.0), 1e-9), 1),
                "mask": bool(mask.any()),
            }
        )
    return {
        "slides": len(cases),
        "positive_slides": int(y.sum()),
        "slide_accuracy": float(np.mean(correct)) if cases else float("nan"),
        "slide_roc_auc": roc_auc_binary(y.astype(int), p_pos) if both else float("nan"),
        "tile_sensitivity_at_1fp": sensitivity_at_fp(scores, truths, masks, 1.0),
        "tile_sensitivity_at_4fp": sensitivity_at_fp(scores, truths, masks, 4.0),
        "dice": dice([c.analysis.tumour for c in cases], truths),
        "method": cases[0].analysis.method.to_dict() if cases else {},
        "per_slide": per_slide,
    }


def report_markdown(result: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", ""]
    for key in ("slides", "positive_slides", "slide_accuracy", "slide_roc_auc", "tile_sensitivity_at_1fp",
                "tile_sensitivity_at_4fp", "dice"):  # fmt: skip
        value = result[key]
        lines.append(f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}")
    lines += ["", f"Method: `{json.dumps(result['method'])}`", ""]
    cols = ["slide", "truth", "predicted", "p_positive", "evidence", "tissue_tiles", "outside_tiles",
            "truth_tumour_cells", "tiles_above_0.5", "predicted_tumour_tiles", "true_positive_tiles",
            "false_positive_tiles", "dice", "tiles_per_second"]  # fmt: skip
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in result["per_slide"]:
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"
