"""Training data from signed cases: the signed, de-identified scans of chosen care
units and dates, written as one folder per signed stage with the `dataset.json` that
`train_model` reads, a manifest of which decisions went in, and an audit event.

The label is the physician's signed stage of the current decision (a correction
supersedes what it corrects), never the model's prediction."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit_record
from accounts.models import CareUnit, User
from diagnostics.intake import imaging, storage
from diagnostics.ml.datasets import DATASET_JSON  # the file train_model reads for the stage order
from diagnostics.models import ReviewDecision, Scan

MANIFEST_NAME = "manifest.json"
# Formats `train_model` decodes as they are; anything else (DICOM) is rendered to PNG.
_KEPT_FORMATS = {Scan.Format.PNG: ".png", Scan.Format.JPEG: ".jpg", Scan.Format.TIFF: ".tif"}


@dataclass
class TrainingSetExport:
    out_dir: Path
    labels: list[str]
    counts: dict[str, int]
    decisions: int
    skipped_slides: int
    manifest_sha256: str


def _folder_name(stage: str) -> str:
    """A stage is a folder name: refuse one that could leave the output folder."""
    if not stage or stage in (".", "..") or "/" in stage or "\\" in stage or "\x00" in stage or stage.startswith("."):
        raise ValidationError(
            {"stage": ValidationError(f"the signed stage {stage!r} cannot be a folder name", code="bad_stage")}
        )
    return stage


def _current_decisions(*, units: list[CareUnit], since: datetime, until: datetime) -> list[ReviewDecision]:
    return list(
        ReviewDecision.objects.filter(
            superseded_by__isnull=True,
            signed_at__gte=since,
            signed_at__lt=until,
            review_item__prediction__scan__case__unit__in=units,
        )
        .select_related("review_item__prediction__scan__case__unit", "review_item__prediction__model_version")
        .order_by("signed_at", "id")
    )


def _ordered_stages(decisions: list[ReviewDecision]) -> list[str]:
    """The signed stages present, in the clinical order of the models' label lists
    (stages no model lists go last, alphabetically)."""
    present = {d.stage for d in decisions}
    order: list[str] = []
    for d in decisions:
        for label in d.review_item.prediction.labels:
            if label not in order:
                order.append(label)
    known = [s for s in order if s in present]
    return known + sorted(present - set(known))


def training_set_export(
    *,
    acting_user: User | None,
    unit_names: list[str],
    since: datetime,
    until: datetime,
    out_dir: Path,
) -> TrainingSetExport:
    """Write the training set to ``out_dir`` (which must not exist yet). Everything is
    written to a temporary folder beside it and renamed at the end, so a failure
    leaves no half-written set behind."""
    if not unit_names:
        raise ValidationError({"units": ValidationError("name at least one care unit", code="no_units")})
    units = list(CareUnit.objects.filter(name__in=unit_names))
    unknown = sorted(set(unit_names) - {u.name for u in units})
    if unknown:
        raise ValidationError(
            {"units": ValidationError(f"no care unit named {', '.join(unknown)}", code="unknown_unit")}
        )
    if since >= until:
        raise ValidationError({"until": ValidationError("--until must be after --since", code="bad_dates")})
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ValidationError({"out": ValidationError(f"{out_dir} already exists", code="out_exists")})
    if not out_dir.parent.is_dir():
        raise ValidationError({"out": ValidationError(f"{out_dir.parent} is not a folder", code="out_parent")})

    decisions = _current_decisions(units=units, since=since, until=until)
    images = [d for d in decisions if d.review_item.prediction.scan.kind == Scan.Kind.IMAGE]
    skipped_slides = len(decisions) - len(images)
    if not images:
        raise ValidationError(
            {"decisions": ValidationError("no signed image decisions in these units and dates", code="empty")}
        )
    labels = _ordered_stages(images)
    for stage in labels:
        _folder_name(stage)

    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        entries: list[dict[str, Any]] = []
        counts = dict.fromkeys(labels, 0)
        for stage in labels:
            (work / stage).mkdir()
        for decision in images:
            scan = decision.review_item.prediction.scan
            data = storage.read_bytes(scan.storage_name)
            if storage.sha256_bytes(data) != scan.sha256:
                raise ValidationError(
                    {"scan": ValidationError(f"stored scan {scan.uuid} does not match its SHA-256", code="corrupt")}
                )
            suffix = _KEPT_FORMATS.get(Scan.Format(scan.format))
            if suffix is None:
                # DICOM: the stored copy is already de-identified; the training reader
                # wants pixels, so render it as the worker does (rescale, window) to PNG.
                out = io.BytesIO()
                imaging.to_rgb_image(data).save(out, format="PNG")
                data, suffix = out.getvalue(), ".png"
            # Named by the scan's public id, never the uploaded file name (which may name a patient).
            relative = f"{decision.stage}/{scan.uuid}{suffix}"
            (work / relative).write_bytes(data)
            counts[decision.stage] += 1
            entries.append(
                {
                    "decision": str(decision.uuid),
                    "review_item": str(decision.review_item.uuid),
                    "scan": str(scan.uuid),
                    "unit": scan.case.unit.name if scan.case.unit else "",
                    "stage": decision.stage,
                    "outcome": decision.meaning,
                    "signed_at": decision.signed_at.isoformat(),
                    "content_sha256": decision.content_sha256,
                    "model_version": str(decision.review_item.prediction.model_version),
                    "predicted": decision.review_item.prediction.predicted_label,
                    "file": relative,
                    "file_sha256": hashlib.sha256(data).hexdigest(),
                }
            )
        (work / DATASET_JSON).write_text(
            json.dumps(
                {
                    "labels": labels,
                    "source": "CancerWeb signed decisions",
                    "label_meaning": "the physician's signed stage (current, non-superseded decision)",
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        manifest = {
            "created_at": timezone.now().isoformat(),
            "units": sorted(u.name for u in units),
            "since": since.isoformat(),
            "until": until.isoformat(),
            "labels": labels,
            "counts": counts,
            "skipped_slides": skipped_slides,
            "decisions": entries,
        }
        manifest_text = json.dumps(manifest, indent=2)
        (work / MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")
        manifest_sha = hashlib.sha256(manifest_text.encode()).hexdigest()
        with transaction.atomic():
            audit_record(
                actor=acting_user,
                action="training_set.export",
                object_type="diagnostics.trainingset",
                object_id=manifest_sha,
                data={
                    "units": manifest["units"],
                    "since": manifest["since"],
                    "until": manifest["until"],
                    "counts": counts,
                    "decisions": [e["decision"] for e in entries],
                    "manifest_sha256": manifest_sha,
                    "out": str(out_dir),
                },
            )
            work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return TrainingSetExport(
        out_dir=out_dir,
        labels=labels,
        counts=counts,
        decisions=len(entries),
        skipped_slides=skipped_slides,
        manifest_sha256=manifest_sha,
    )
