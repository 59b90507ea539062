"""Reads, always scoped to the user asking, so no view builds an unscoped queryset."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.http import Http404
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION
from diagnostics.models import (
    BlindedRead,
    Case,
    InferenceJob,
    ModelVersion,
    Notification,
    ReviewDecision,
    ReviewerPreference,
    ReviewItem,
    Scan,
)

VIEW_CASE = "diagnostics.view_case"


def cases_for_user(*, user: User) -> QuerySet[Case]:
    """Cases the user may see, decided here for every page and the API.

    Only object permissions count: those granted to the user's care-unit groups when
    the case was created, and any granted to the user for a single case. A global
    `view_case` permission (or superuser status) never widens the list, so an admin
    sees no clinical data unless granted. One query: guardian filters by a join on
    the direct object-permission tables.
    """
    if not user.is_authenticated or not user.is_active:
        return Case.objects.none()
    return get_objects_for_user(user, VIEW_CASE, klass=Case, accept_global_perms=False, with_superuser=False).order_by(
        "-created_at"
    )


def active_tasks() -> list[str]:
    """Tasks that have an active model, in a stable order: what a new case may choose.
    Not clinical data, so not scoped to a user."""
    return list(
        ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).order_by("task").values_list("task", flat=True)
    )


def case_get(*, user: User, case_uuid: UUID) -> Case:
    try:
        return cases_for_user(user=user).get(uuid=case_uuid)
    except Case.DoesNotExist as exc:
        raise Http404("no such case") from exc


def _require_reviewer(user: User) -> None:
    if not user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("the review queue is for physicians")


def review_queue(*, user: User) -> QuerySet[ReviewItem]:
    """Pending items: uncertain predictions first, then most advanced predicted stage,
    then least confident, then oldest.

    Uncertain items go first overall, not only within their stage: sorting by stage
    trusts the predicted stage, and an uncertain prediction's stage is exactly what the
    model could not tell, so ranking it there could bury a malignant case under
    confident benign ones. Within the uncertain group the same stage-then-confidence
    order applies. Confident predictions keep the existing order."""
    _require_reviewer(user)
    return (
        review_items_for_user(user=user)
        .filter(status=ReviewItem.Status.PENDING)
        .select_related("prediction", "prediction__scan", "prediction__scan__case", "prediction__model_version")
        .order_by("-prediction__uncertain", "-prediction__stage_rank", "prediction__confidence", "created_at", "id")
    )


def review_items_for_user(*, user: User) -> QuerySet[ReviewItem]:
    """Items of the cases the physician may see: the queue of their care units."""
    _require_reviewer(user)
    return ReviewItem.objects.filter(prediction__scan__case__in=cases_for_user(user=user)).select_related(
        "prediction", "prediction__scan", "prediction__scan__case", "prediction__model_version"
    )


def review_item_get(*, user: User, item_uuid: UUID) -> ReviewItem:
    try:
        return review_items_for_user(user=user).get(uuid=item_uuid)
    except ReviewItem.DoesNotExist as exc:
        raise Http404("no such review item") from exc


def scan_get_for_image(*, user: User, scan_uuid: UUID) -> Scan:
    """A scan's image may be seen by whoever may see its case (reviewers see the
    cases of their units, so the queue's images follow)."""
    try:
        return Scan.objects.filter(case__in=cases_for_user(user=user)).get(uuid=scan_uuid)
    except Scan.DoesNotExist as exc:
        raise Http404("no such scan") from exc


def heatmap_get(*, user: User, item_uuid: UUID) -> str:
    """The storage name of a review item's heat map, for those who may see the item."""
    item = review_item_get(user=user, item_uuid=item_uuid)
    name = item.prediction.heatmap_storage_name
    if not name:
        raise Http404("this prediction has no heat map")
    return name


@dataclass(frozen=True)
class ScanStatus:
    code: str  # queued | running | awaiting_review | signed | failed
    label: str
    decision: ReviewDecision | None = None
    error: str = ""


def current_decision(item: ReviewItem) -> ReviewDecision | None:
    decisions = [d for d in item.decisions.all() if not _is_superseded(d)]
    return decisions[-1] if decisions else None


def _is_superseded(decision: ReviewDecision) -> bool:
    try:
        decision.superseded_by  # noqa: B018 - reverse one-to-one raises when absent
    except ReviewDecision.DoesNotExist:
        return False
    return True


def scan_status(scan: Scan) -> ScanStatus:
    """What the clinician sees: the job's progress, then the review, never the AI's answer."""
    job: InferenceJob | None = getattr(scan, "job", None)
    if job is None or job.status == InferenceJob.Status.QUEUED:
        return ScanStatus("queued", "Queued")
    if job.status == InferenceJob.Status.RUNNING:
        return ScanStatus("running", "Running")
    if job.status == InferenceJob.Status.FAILED:
        return ScanStatus("failed", "Failed", error=job.error)
    item = scan.prediction.review_item
    decision = current_decision(item)
    if decision is None:
        return ScanStatus("awaiting_review", "Awaiting review")
    return ScanStatus("signed", "Signed", decision=decision)


def case_scans_with_status(*, case: Case) -> list[tuple[Scan, ScanStatus]]:
    scans = case.scans.select_related("job", "prediction", "prediction__review_item").prefetch_related(
        "prediction__review_item__decisions", "prediction__review_item__decisions__superseded_by"
    )
    return [(scan, scan_status(scan)) for scan in scans]


def case_status_summary(statuses: list[ScanStatus]) -> str:
    """A case is only as far along as its least advanced scan."""
    order = ["failed", "queued", "running", "awaiting_review", "signed"]
    if not statuses:
        return "No images"
    code = min((s.code for s in statuses), key=order.index)
    return {
        "failed": "Failed",
        "queued": "Queued",
        "running": "Running",
        "awaiting_review": "Awaiting review",
        "signed": "Signed",
    }[code]


# --- worklists (issue 6) -----------------------------------------------------------

CASE_STATUS_CODES = ["failed", "queued", "running", "awaiting_review", "signed"]


def _scans_where(**lookups: object) -> Exists:
    return Exists(Scan.objects.filter(case=OuterRef("pk"), **lookups))


def cases_filtered(
    *,
    user: User,
    status: str = "",
    stage: str = "",
    date_from: date | None = None,
    date_to: date | None = None,
    search: str = "",
    unit: str = "",
) -> QuerySet[Case]:
    """The user's cases narrowed by the worklist's filters. ``status`` matches the case
    summary (a case is as far along as its least advanced scan), so the conditions
    exclude every less advanced state. ``stage`` is the physician's signed stage."""
    cases = cases_for_user(user=user)
    failed = _scans_where(job__status=InferenceJob.Status.FAILED)
    queued = _scans_where(job__isnull=True) | _scans_where(job__status=InferenceJob.Status.QUEUED)
    running = _scans_where(job__status=InferenceJob.Status.RUNNING)
    pending = _scans_where(prediction__review_item__status=ReviewItem.Status.PENDING)
    if status == "failed":
        cases = cases.filter(failed)
    elif status == "queued":
        cases = cases.filter(queued).exclude(failed)
    elif status == "running":
        cases = cases.filter(running).exclude(failed).exclude(queued)
    elif status == "awaiting_review":
        cases = cases.filter(pending).exclude(failed).exclude(queued).exclude(running)
    elif status == "signed":
        cases = (
            cases.filter(_scans_where())
            .exclude(failed)
            .exclude(queued)
            .exclude(running)
            .exclude(pending)
            .exclude(_scans_where(prediction__isnull=True))
        )
    elif status:
        raise ValueError(f"unknown status {status!r}")
    if stage:
        current = ReviewDecision.objects.filter(
            review_item__prediction__scan__case=OuterRef("pk"), stage=stage, superseded_by__isnull=True
        )
        cases = cases.filter(Exists(current))
    if date_from:
        cases = cases.filter(created_at__date__gte=date_from)
    if date_to:
        cases = cases.filter(created_at__date__lte=date_to)
    if search:
        cases = cases.filter(patient_ref__icontains=search)
    if unit:
        cases = cases.filter(unit__uuid=unit)
    return cases


def review_queue_filtered(
    *,
    user: User,
    stage: str = "",
    date_from: date | None = None,
    date_to: date | None = None,
    search: str = "",
    unit: str = "",
) -> QuerySet[ReviewItem]:
    items = review_queue(user=user)
    if unit:
        items = items.filter(prediction__scan__case__unit__uuid=unit)
    if stage:
        items = items.filter(prediction__predicted_label=stage)
    if date_from:
        items = items.filter(created_at__date__gte=date_from)
    if date_to:
        items = items.filter(created_at__date__lte=date_to)
    if search:
        items = items.filter(prediction__scan__case__patient_ref__icontains=search)
    return items


def stage_labels_known() -> list[str]:
    """Every stage label of every registered model, for the filters' choices."""
    seen: list[str] = []
    for labels in ModelVersion.objects.order_by("registered_at", "id").values_list("labels", flat=True):
        for label in labels:
            if label not in seen:
                seen.append(label)
    return seen


def review_queue_neighbours(*, user: User, item: ReviewItem) -> tuple[ReviewItem | None, ReviewItem | None]:
    """Previous and next pending items in queue order, for the viewer's n / p keys. An
    item already signed has no place in the queue: its "next" is the queue's head."""
    uuids = list(review_queue(user=user).values_list("uuid", flat=True)[:2000])
    if item.uuid not in uuids:
        head = review_queue(user=user).first()
        return None, head
    i = uuids.index(item.uuid)
    prev_uuid = uuids[i - 1] if i > 0 else None
    next_uuid = uuids[i + 1] if i + 1 < len(uuids) else None
    found = {it.uuid: it for it in ReviewItem.objects.filter(uuid__in=[u for u in (prev_uuid, next_uuid) if u])}
    return found.get(prev_uuid) if prev_uuid else None, found.get(next_uuid) if next_uuid else None


def reviewer_blinded_first(*, user: User) -> bool:
    pref = ReviewerPreference.objects.filter(user=user).first()
    return bool(pref and pref.blinded_first)


def blinded_read_get(*, user: User, item: ReviewItem) -> BlindedRead | None:
    return BlindedRead.objects.filter(review_item=item, physician=user).first()


def notifications_for_user(*, user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(user=user).order_by("-created_at", "-id")


def model_version_get(*, user: User, model_uuid: UUID) -> ModelVersion:
    """Model cards are for whoever works with the model's output: physicians and admins."""
    if not (user.has_perm(REVIEW_PERMISSION) or user.has_perm("diagnostics.view_modelversion")):
        raise PermissionDenied("model cards are for physicians and admins")
    try:
        return ModelVersion.objects.get(uuid=model_uuid)
    except ModelVersion.DoesNotExist as exc:
        raise Http404("no such model") from exc


# --- dashboards (issue 6) ----------------------------------------------------------


@dataclass
class StageMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ModelAgreement:
    """Agreement of one model version with the physicians' signed stages, the
    physician's stage taken as the truth (rows of the confusion matrix)."""

    model_version: ModelVersion
    labels: list[str]
    n: int
    accuracy: float
    stages: list[StageMetrics]
    confusion: list[list[int]]
    trend: list[tuple[date, int, float]] = field(default_factory=list)  # day, n, accuracy


@dataclass
class QueueStats:
    pending: int
    oldest_minutes: float | None
    median_age_minutes: float | None
    signed: int
    median_signoff_minutes: float | None
    mean_signoff_minutes: float | None


def _require_dashboard(user: User) -> None:
    if not (user.has_perm(REVIEW_PERMISSION) or user.has_perm("diagnostics.view_modelversion")):
        raise PermissionDenied("dashboards are for physicians and admins")


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _current_decisions() -> QuerySet[ReviewDecision]:
    # A correction replaces the decision it supersedes: only the latest counts.
    return ReviewDecision.objects.filter(superseded_by__isnull=True)


def agreement_by_model(*, user: User) -> list[ModelAgreement]:
    """Per model version: accuracy, per-stage precision / recall / F1 and the confusion
    matrix of the model's predicted stage against the physician's signed stage, plus
    the daily trend of accuracy by signing day."""
    import numpy as np

    from diagnostics.ml import metrics

    _require_dashboard(user)
    rows = _current_decisions().values_list(
        "review_item__prediction__model_version_id",
        "review_item__prediction__predicted_index",
        "stage",
        "signed_at",
    )
    by_model: dict[int, list[tuple[int, str, datetime]]] = {}
    for model_id, predicted, stage, signed_at in rows:
        by_model.setdefault(model_id, []).append((predicted, stage, signed_at))
    versions = {m.id: m for m in ModelVersion.objects.filter(id__in=by_model)}
    result = []
    for model_id in sorted(by_model, key=lambda i: (versions[i].registered_at, i)):
        mv = versions[model_id]
        labels = list(mv.labels)
        pairs = [(labels.index(stage), predicted, signed_at) for predicted, stage, signed_at in by_model[model_id]]
        y_true = np.array([t for t, _, _ in pairs])
        y_pred = np.array([p for _, p, _ in pairs])
        prf = metrics.per_class_prf(y_true, y_pred, len(labels))
        stages = [
            StageMetrics(
                label=label,
                precision=float(prf["precision"][i]),
                recall=float(prf["recall"][i]),
                f1=float(prf["f1"][i]),
                support=int(prf["support"][i]),
            )
            for i, label in enumerate(labels)
        ]
        days: dict[date, list[bool]] = {}
        for t, p, signed_at in pairs:
            days.setdefault(timezone.localdate(signed_at), []).append(t == p)
        trend = [(day, len(hits), sum(hits) / len(hits)) for day, hits in sorted(days.items())]
        result.append(
            ModelAgreement(
                model_version=mv,
                labels=labels,
                n=len(pairs),
                accuracy=metrics.accuracy(y_true, y_pred),
                stages=stages,
                confusion=metrics.confusion_matrix(y_true, y_pred, len(labels)).tolist(),
                trend=trend,
            )
        )
    return result


def queue_stats(*, user: User) -> QueueStats:
    """Queue age of pending items and time from queue entry to first sign-off."""
    _require_dashboard(user)
    now = timezone.now()
    ages = [
        (now - created).total_seconds() / 60
        for created in ReviewItem.objects.filter(status=ReviewItem.Status.PENDING).values_list("created_at", flat=True)
    ]
    first_signed: dict[int, tuple[datetime, datetime]] = {}
    for item_id, created, signed_at in ReviewDecision.objects.filter(supersedes__isnull=True).values_list(
        "review_item_id", "review_item__created_at", "signed_at"
    ):
        if item_id not in first_signed or signed_at < first_signed[item_id][1]:
            first_signed[item_id] = (created, signed_at)
    signoff = [(signed - created) / timedelta(minutes=1) for created, signed in first_signed.values()]
    return QueueStats(
        pending=len(ages),
        oldest_minutes=max(ages) if ages else None,
        median_age_minutes=_median(ages),
        signed=len(signoff),
        median_signoff_minutes=_median(signoff),
        mean_signoff_minutes=sum(signoff) / len(signoff) if signoff else None,
    )


# --- API reads (issue 7): every one goes through cases_for_user / the reviewer check. ---


def scans_for_user(*, user: User) -> QuerySet[Scan]:
    """Scans of the cases the user may see."""
    return Scan.objects.filter(case__in=cases_for_user(user=user)).select_related("case", "job")


def scan_get(*, user: User, scan_uuid: UUID) -> Scan:
    try:
        return scans_for_user(user=user).get(uuid=scan_uuid)
    except Scan.DoesNotExist as exc:
        raise Http404("no such scan") from exc


def jobs_for_user(*, user: User) -> QuerySet[InferenceJob]:
    """Inference jobs of the scans of the cases the user may see."""
    return (
        InferenceJob.objects.filter(scan__case__in=cases_for_user(user=user))
        .select_related("scan", "scan__case")
        .order_by("-created_at", "-id")
    )


def job_get(*, user: User, job_uuid: UUID) -> InferenceJob:
    try:
        return jobs_for_user(user=user).get(uuid=job_uuid)
    except InferenceJob.DoesNotExist as exc:
        raise Http404("no such job") from exc


def models_for_user(*, user: User) -> QuerySet[ModelVersion]:
    """The model registry: metadata only, readable by every signed-in user."""
    if not user.is_authenticated:
        return ModelVersion.objects.none()
    return ModelVersion.objects.order_by("-registered_at", "-id")


def model_get(*, user: User, model_uuid: UUID) -> ModelVersion:
    try:
        return models_for_user(user=user).get(uuid=model_uuid)
    except ModelVersion.DoesNotExist as exc:
        raise Http404("no such model version") from exc
