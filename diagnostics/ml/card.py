"""The model card: written only from the manifest, so every number on it is a measured one."""

from __future__ import annotations

from typing import Any

from .bundle import Manifest
from .calibration import describe as describe_calibration

MODEL_CARD = "MODEL_CARD.md"


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _metrics_section(title: str, v: dict[str, Any], labels: list[str]) -> str:
    cm = v["confusion_matrix"]
    cm_head = "| true \\ predicted | " + " | ".join(labels) + " |"
    cm_sep = "|---" * (len(labels) + 1) + "|"
    cm_rows = "\n".join(
        f"| {label} | " + " | ".join(str(c) for c in row) + " |" for label, row in zip(labels, cm, strict=True)
    )
    pc_rows = "\n".join(
        f"| {label} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | {s['support']} |"
        for label, s in v["per_class"].items()
    )
    auc_kind = "macro one-vs-rest" if len(labels) > 2 else "binary"
    return f"""## {title} (n = {v["n"]})

| metric | value |
|---|---|
| accuracy | {_fmt(v["accuracy"])} |
| balanced accuracy | {_fmt(v["balanced_accuracy"])} |
| ROC AUC ({auc_kind}) | {_fmt(v["roc_auc"])} |
| ECE (15 bins), before temperature | {_fmt(v["ece_before_temperature"])} |
| ECE (15 bins), after temperature | {_fmt(v["ece_after_temperature"])} |
| NLL, before temperature | {_fmt(v["nll_before_temperature"])} |
| NLL, after temperature | {_fmt(v["nll_after_temperature"])} |

| label | precision | recall | F1 | support |
|---|---|---|---|---|
{pc_rows}

Confusion matrix (rows: true label, columns: predicted label):

{cm_head}
{cm_sep}
{cm_rows}
"""


def _ci(v: dict[str, Any], key: str) -> str:
    ci = (v.get("ci95") or {}).get(key)
    return f" ({ci[0]:.3f} to {ci[1]:.3f})" if ci else ""


def _report_section(m: Manifest) -> str:
    """The report split's figures with their 95 % intervals and the reliability diagram."""
    v = m.metrics["report"]
    roles = m.metrics["roles"]
    labels = m.labels
    auc_kind = "macro one-vs-rest" if len(labels) > 2 else "binary"
    table = _metrics_section("Per class and confusion matrix (report split)", v, labels).split("\n| label |", 1)[1]
    bars = "\n".join(
        f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['n']} | {b['confidence']:.3f} | {b['accuracy']:.3f} | "
        + "#" * round(20 * b["accuracy"])
        + " |"
        for b in v["reliability"]
    )
    tta_line = f"Test-time averaging over the views `{m.tta}` is part of the model and of these figures." * (
        m.tta != "none"
    )
    return f"""## Measured performance: report split (n = {v["n"]})

Every figure in this section comes from the **report split: {roles["report"]}**, which
took no part in training, epoch choice or calibration. Roles of the data:

- fit (the network learnt from it): {roles["fit"]};
- select (chose the best epoch and fitted the calibration): {roles["select"]};
- report (the figures below): {roles["report"]}.

Intervals in brackets: 95 % {v.get("ci95_method", "bootstrap")}.
{tta_line}

| metric | value (95 % interval) |
|---|---|
| accuracy | {_fmt(v["accuracy"])}{_ci(v, "accuracy")} |
| balanced accuracy | {_fmt(v["balanced_accuracy"])}{_ci(v, "balanced_accuracy")} |
| ROC AUC ({auc_kind}) | {_fmt(v["roc_auc"])}{_ci(v, "roc_auc")} |
| ECE (15 bins), calibrated | {_fmt(v["ece_after_temperature"])}{_ci(v, "ece")} |
| ECE (15 bins), uncalibrated softmax | {_fmt(v["ece_before_temperature"])} |
| NLL, calibrated / uncalibrated | {_fmt(v["nll_after_temperature"])} / {_fmt(v["nll_before_temperature"])} |

| label |{table}
Reliability diagram (report split, calibrated top-class probability in 10 bins; a
calibrated model has accuracy close to confidence in every bin):

| confidence bin | images | mean confidence | accuracy | accuracy bar |
|---|---|---|---|---|
{bars}

"""


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f} %"


def ood_card_section(m: Manifest) -> str:
    """The out-of-distribution check and its measured rates (diagnostics/ml/ood_fit.py)."""
    o = m.ood
    if not o:
        return (
            "## Inputs outside the training data\n\nThis bundle carries no out-of-distribution reference: "
            "no input is flagged.\n\n"
        )
    me = o.get("measured", {})
    roles = me.get("roles", {})
    others = ", ".join(me.get("other_tasks") or []) or "none"
    return f"""## Inputs outside the training data

An image is flagged "outside what this model was trained on", and shown with no suggested
stage, when its shorter side is under {o["min_side"]} px, when it is nearly blank (grey-level
standard deviation under {o["min_std"]}), or when the Mahalanobis distance of its penultimate
features to the nearest training class (or of its colour and texture statistics to the
training images) is above the threshold chosen on held-out images of this task
(`{o["method"]}`, at most {_pct(o["max_inlier_rate"])} flagged by each distance there).

- Reference fitted on: {roles.get("fit", "n/a")}; threshold chosen on: {roles.get("select", "n/a")};
  rates reported on: {roles.get("report", "n/a")} and the other half of the outliers.
- Own-task images flagged (report split, {me.get("own_report_n")} images): {_pct(me.get("own_report_flagged"))}.
- Other tasks' images flagged ({others}, {me.get("other_report_n")} images): {_pct(me.get("other_report_flagged"))}.
- Synthetic non-tissue images flagged ({me.get("synthetic_report_n")} images): \
{_pct(me.get("synthetic_report_flagged"))}.

"""


def _architecture_text(t: dict[str, Any]) -> str:
    return f" Architecture: {t['architecture']}." if t.get("architecture") else ""


def _epochs_text(t: dict[str, Any]) -> str:
    """The epochs line; for an ensemble, one line per member."""
    members = t.get("members")
    if not members:
        return f"- Epochs: {t['epochs_run']} run of {t['epochs_requested']} requested; best epoch {t['best_epoch']}."
    lines = [
        f"- Ensemble of {len(members)} networks of this backbone, trained one after another on the fit split "
        "with their own seeds and each stopped at its own best selection-split AUC; the bundle is one network "
        "whose logits are the mean of theirs (the parameter count above is the sum)."
    ]
    for k, mem in enumerate(members, 1):
        lines.append(
            f"  - Member {k} (seed {mem['seed']}): {mem['epochs_run']} epochs run of {t['epochs_requested']} "
            f"requested; best epoch {mem['best_epoch']} (selection AUC {_fmt(mem['best_val_auc_during_training'])}); "
            f"{mem['training_seconds']} s."
        )
    return "\n".join(lines)


def _distillation_text(t: dict[str, Any]) -> str:
    """The distillation line, or nothing for a network trained on the labels alone."""
    d = t.get("distillation")
    if not d:
        return ""
    members = d.get("teacher_members", 1)
    teacher = f"{d['teacher']} ({members} networks, " if members > 1 else f"{d['teacher']} ("
    return (
        f"\n- Distilled from {teacher}test-time views `{d['teacher_tta']}`, model SHA-256 "
        f"{str(d['teacher_sha256'])[:12]}…), trained on the same fit split and selected on the same selection "
        f"split: loss (1 - {d['weight']:g}) x cross-entropy with the labels + {d['weight']:g} x T² x cross-entropy "
        f"with the teacher's softened answers, T = {d['temperature']:g}; targets: {d['targets']}."
    )


def render_model_card(m: Manifest) -> str:
    """A model card written only from the manifest, so every number is a measured one."""
    t = m.metrics["training"]
    d = m.data_summary
    labels = m.labels
    has_test = "test" in m.metrics
    splits = ["train", "valid"] + (["test"] if "test" in d["splits"] else [])
    split_head = "| label | " + " | ".join(splits) + " |"
    split_sep = "|---" * (len(splits) + 1) + "|"
    split_rows = "\n".join(
        f"| {label} | " + " | ".join(str(d["splits"][s][label]) for s in splits) + " |" for label in labels
    )
    unreadable = ", ".join(f"{s} {d['unreadable_skipped'].get(s, 0)}" for s in splits)
    libs = ", ".join(f"{k} {val}" for k, val in m.library_versions.items())
    sections = []
    if "report" in m.metrics:
        sel = m.metrics["select"]
        sections.append(_report_section(m))
        sections.append(
            f"Selection split ({m.metrics['roles']['select']}, chose the epoch and fitted the calibration, "
            f"so optimistic): accuracy {_fmt(sel['accuracy'])}, ROC AUC {_fmt(sel['roc_auc'])}, "
            f"ECE {_fmt(sel['ece_after_temperature'])}.\n"
        )
        limitation = (
            "- The report split took no part in training, epoch selection or calibration; the\n"
            "  intervals show how far its figures could move on another sample of the same source."
        )
    elif has_test:
        sections.append(_metrics_section("Measured performance: held-out TEST split", m.metrics["test"], labels))
        sections.append(
            _metrics_section(
                "Validation split (chose the epoch and fitted the temperature)", m.metrics["valid"], labels
            )
        )
        limitation = (
            "- The test split took no part in training, epoch selection or calibration; with "
            "this few images its figures still carry wide uncertainty (a handful of images "
            "moves them by several points)."
        )
    else:
        sections.append(_metrics_section("Measured performance (validation split)", m.metrics["valid"], labels))
        limitation = (
            "- The validation split chose the best epoch and fitted the temperature, and the figures\n"
            "  above are measured on that same split: they are optimistic. There is no separate\n"
            "  held-out test set in this bundle."
        )
    metrics_text = "\n".join(sections)
    ood_text = ood_card_section(m)
    return f"""# Model card: {m.name} {m.version}

> **Demonstration model. Not a diagnostic device and not validated for clinical use.**
> Its outputs must not inform any decision about a patient.

## Task

{m.task}

Labels, ordered least to most advanced: {", ".join(f"`{x}`" for x in labels)}.

## Data

- Dataset: {d.get("dataset_name") or "unnamed"}
- Source: {d.get("source") or "not recorded"}
- License: {d.get("license") or "not recorded"}
- Label order taken from: {d["label_order_source"]}
- Split: {d["split_method"]}
- Unreadable images skipped: {unreadable}; images per class capped at: {d["limit_per_class"]}

{split_head}
{split_sep}
{split_rows}

## Preprocessing

`{m.preprocessing}`: Pillow decode (JPEG draft mode), convert to RGB, resize to \
{m.input_size}x{m.input_size} bilinear, uint8 values 0..255.
The model rescales to 0..1 itself and outputs logits; probabilities come from
{describe_calibration(m.calibration, m.temperature)}, fitted on the selection split.
Test-time views averaged: `{m.tta}`. Predictions whose top probability is below
{m.uncertain_below} are reported as uncertain.

## Architecture and training

- Backbone: `{t["backbone"]}`, {t["parameters"]:,} parameters, initial weights: \
{t.get("initial_weights", "random (trained from scratch)")}.{_architecture_text(t)}
- Optimizer: {t["optimizer"]}, batch size {t["batch_size"]}, seed {t["seed"]}, BatchNorm \
momentum {t.get("batchnorm_momentum", 0.99)}.
- Schedule: {t["schedule"]}.
{_epochs_text(t)}{_distillation_text(t)}
- Class weights: {", ".join(f"{k} {w:.3f}" for k, w in t["class_weights"].items())}.
- Augmentation: {t["augmentation"]}.
- Time on the training machine ({t["cpu_count"]} CPU cores, no GPU): loading \
{t["load_seconds"]} s, training {t["training_seconds"]} s, total {t["total_seconds"]} s.
- Libraries: {libs}.

{metrics_text}
{ood_text}## Limitations

{limitation}
- The data are a small public research subset, not clinical validation data; they do not
  represent any particular hospital's scanners, stains or patients.
- This is a demonstration model, not a diagnostic device, and it is not validated for
  clinical use.
"""


def card_with_ood_section(card: str, manifest: Manifest) -> str:
    """The model card with its out-of-distribution section replaced, or put before
    "## Limitations" (the rest of a hand-annotated card is kept as it is)."""
    section = ood_card_section(manifest)
    head = section.split("\n", 1)[0]
    if head in card:
        start = card.index(head)
        end = card.find("\n## ", start + len(head))
        return card[:start] + section + (card[end + 1 :] if end >= 0 else "")
    marker = "## Limitations"
    if marker in card:
        at = card.index(marker)
        return card[:at] + section + card[at:]
    return card.rstrip("\n") + "\n\n" + section
