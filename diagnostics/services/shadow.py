"""Shadow evaluation: a candidate model version predicts beside the active one of its
task, on new scans (the worker calls `shadow_after_batch` once the clinical
predictions are stored) and, on demand, on the last N signed cases. Its output goes to
ShadowPrediction only: no page, API answer or notification a physician or clinician
reaches reads that table, so a candidate can be judged on local cases before anyone
sees what it says. The comparison itself is selectors/shadow.py."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.audit import audit_record
from accounts.models import User
from diagnostics.intake import imaging, storage
from diagnostics.models import ModelVersion, ReviewDecision, Scan, ShadowPrediction

logger = logging.getLogger(__name__)

# The on-demand backfill's default: enough signed cases for a paired test to mean
# something, few enough to finish inside one task's time limit on a CPU worker.
DEFAULT_BACKFILL = 200
# Registered name of the backfill task (diagnostics/tasks.py), sent by name.
SHADOW_BACKFILL_TASK = "diagnostics.shadow_backfill"


def candidates_for_task(task: str) -> list[ModelVersion]:
    return list(ModelVersion.objects.filter(task=task, status=ModelVersion.Status.CANDIDATE).order_by("id"))


def shadow_predict(*, model_version: ModelVersion, scans: list[Scan], source: str) -> list[ShadowPrediction]:
    """Predict with ``model_version`` on image scans and store what it said, once per
    scan (a scan it already saw is skipped). Returns the new shadow predictions."""
    from diagnostics.inference import runner_for

    seen = set(
        ShadowPrediction.objects.filter(model_version=model_version, scan__in=scans).values_list("scan_id", flat=True)
    )
    todo = [s for s in scans if s.id not in seen and s.kind == Scan.Kind.IMAGE]
    if not todo:
        return []
    import numpy as np

    runner = runner_for(model_version)
    arrays, kept, sizes = [], [], []
    for scan in todo:
        data = storage.read_bytes(scan.storage_name)
        if storage.sha256_bytes(data) != scan.sha256:
            logger.warning("shadow: stored scan %s does not match its SHA-256; skipped", scan.uuid)
            continue
        arrays.append(imaging.decode_for_model(data, size=runner.input_size))
        kept.append(scan)
        sizes.append((scan.width, scan.height))
    if not kept:
        return []
    # The same call and the same out-of-distribution rule as the clinical worker, so the
    # comparison can say how often the candidate would have withheld its answer.
    batch = np.stack(arrays)
    out = runner.run(batch, heatmaps=True)
    ood = runner.ood_reasons(out, batch, sizes)
    labels = list(model_version.labels)
    rows = []
    for scan, row, o in zip(kept, out.probabilities, ood, strict=True):
        probs = [float(p) for p in row]
        index = max(range(len(labels)), key=lambda i: probs[i])
        shadow = ShadowPrediction(
            model_version=model_version,
            scan=scan,
            source=source,
            labels=labels,
            probabilities=probs,
            predicted_label=labels[index],
            confidence=probs[index],
            out_of_distribution=bool(o["reasons"]),
            ood_reasons=list(o["reasons"]),
        )
        shadow.full_clean(exclude=["model_version", "scan"], validate_unique=False, validate_constraints=False)
        rows.append(shadow)
    with transaction.atomic():
        # A duplicate delivery of the same batch inserts nothing twice.
        created = ShadowPrediction.objects.bulk_create(rows, ignore_conflicts=True)
        audit_record(
            actor=None,
            action="shadow.predict",
            obj=model_version,
            data={"source": source, "scans": [str(s.uuid) for s in kept]},
        )
    return created


def shadow_after_batch(*, scans: list[Scan]) -> int:
    """Called by the worker after a batch's clinical predictions are stored, with the
    batch's scans (their cases loaded: the worker read them with its jobs, so this costs
    one statement per batch, the candidates'): each candidate of the batch's task
    predicts on the same scans. A candidate's failure is logged and never touches the
    clinical jobs, which are already done."""
    stored = 0
    scans = [s for s in scans if s.kind == Scan.Kind.IMAGE]
    try:
        candidates = candidates_for_task(scans[0].case.task) if scans else []
    except Exception:
        logger.exception("shadow: could not look up the batch's candidates")
        return 0
    for candidate in candidates:
        try:
            stored += len(shadow_predict(model_version=candidate, scans=scans, source=ShadowPrediction.Source.LIVE))
        except Exception:
            logger.exception("shadow prediction with candidate %s failed", candidate)
    return stored


def shadow_backfill(*, acting_user: User | None, model_version: ModelVersion, last: int = DEFAULT_BACKFILL) -> int:
    """Run a candidate on the scans of the last ``last`` signed image cases of its task
    (the current signed decision of each), for the comparison page. Returns how many
    new shadow predictions were stored."""
    if model_version.status != ModelVersion.Status.CANDIDATE:
        raise ValidationError(
            {"status": ValidationError(f"{model_version} is not a candidate (it is {model_version.status})",
                                       code="not_candidate")}
        )  # fmt: skip
    if last < 1:
        raise ValidationError({"last": ValidationError("give a positive number of cases", code="bad_count")})
    scan_ids = list(
        ReviewDecision.objects.filter(
            superseded_by__isnull=True,
            review_item__prediction__scan__case__task=model_version.task,
            review_item__prediction__scan__kind=Scan.Kind.IMAGE,
        )
        .order_by("-signed_at", "-id")
        .values_list("review_item__prediction__scan_id", flat=True)[:last]
    )
    scans = list(Scan.objects.filter(id__in=scan_ids))
    created = 0
    batch = 32
    for start in range(0, len(scans), batch):
        created += len(
            shadow_predict(
                model_version=model_version, scans=scans[start : start + batch], source=ShadowPrediction.Source.BACKFILL
            )
        )
    audit_record(
        actor=acting_user,
        action="shadow.backfill",
        obj=model_version,
        data={"last": last, "signed_cases": len(scans), "new_predictions": created},
    )
    return created


def shadow_backfill_by_id(*, model_version_id: int, last: int, acting_user_id: int | None) -> int:
    model_version = ModelVersion.objects.filter(pk=model_version_id).first()
    if model_version is None or model_version.status != ModelVersion.Status.CANDIDATE:
        return 0  # activated or retired since it was asked for: nothing to do
    actor = User.objects.filter(pk=acting_user_id).first() if acting_user_id else None
    return shadow_backfill(acting_user=actor, model_version=model_version, last=last)


def shadow_backfill_request(*, acting_user: User, model_version: ModelVersion, last: int = DEFAULT_BACKFILL) -> None:
    """Ask an inference worker to run the backfill (the web process has no network)."""
    if model_version.status != ModelVersion.Status.CANDIDATE:
        raise ValidationError({"status": ValidationError(f"{model_version} is not a candidate", code="not_candidate")})
    from cancerweb.celery import app as celery_app

    with transaction.atomic():
        audit_record(actor=acting_user, action="shadow.backfill_request", obj=model_version, data={"last": last})
        transaction.on_commit(
            lambda: celery_app.send_task(
                SHADOW_BACKFILL_TASK,
                kwargs={"model_version_id": model_version.id, "last": last, "acting_user_id": acting_user.id},
                queue="inference",
            )
        )
