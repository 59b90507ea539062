"""Reads, always scoped to the user asking, so no view builds an unscoped queryset."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION
from diagnostics.models import Case, InferenceJob, ReviewDecision, ReviewItem, Scan


def cases_for_user(*, user: User) -> QuerySet[Case]:
    """Cases the user may see: those they created. (Care units widen this later.)"""
    if not user.is_authenticated:
        return Case.objects.none()
    return Case.objects.filter(created_by=user).order_by("-created_at")


def case_get(*, user: User, case_uuid: UUID) -> Case:
    try:
        return cases_for_user(user=user).get(uuid=case_uuid)
    except Case.DoesNotExist as exc:
        raise Http404("no such case") from exc


def _require_reviewer(user: User) -> None:
    if not user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("the review queue is for physicians")


def review_queue(*, user: User) -> QuerySet[ReviewItem]:
    """Pending items: most advanced predicted stage first, then least confident, then oldest."""
    _require_reviewer(user)
    return (
        ReviewItem.objects.filter(status=ReviewItem.Status.PENDING)
        .select_related("prediction", "prediction__scan", "prediction__scan__case", "prediction__model_version")
        .order_by("-prediction__stage_rank", "prediction__confidence", "created_at", "id")
    )


def review_items_for_user(*, user: User) -> QuerySet[ReviewItem]:
    _require_reviewer(user)
    return ReviewItem.objects.select_related(
        "prediction", "prediction__scan", "prediction__scan__case", "prediction__model_version"
    )


def review_item_get(*, user: User, item_uuid: UUID) -> ReviewItem:
    try:
        return review_items_for_user(user=user).get(uuid=item_uuid)
    except ReviewItem.DoesNotExist as exc:
        raise Http404("no such review item") from exc


def job_get_for_user(*, user: User, job_uuid: UUID) -> InferenceJob:
    """A job of one of the user's own cases; anyone else's answers 404."""
    try:
        return InferenceJob.objects.select_related("scan__case").get(
            uuid=job_uuid, scan__case__in=cases_for_user(user=user)
        )
    except InferenceJob.DoesNotExist as exc:
        raise Http404("no such analysis") from exc


def scan_get_for_image(*, user: User, scan_uuid: UUID) -> Scan:
    """A scan's image may be seen by whoever may see its case, and by reviewers
    when the scan is in the review queue."""
    visible = Q(case__in=cases_for_user(user=user))
    if user.is_authenticated and user.has_perm(REVIEW_PERMISSION):
        visible |= Q(prediction__isnull=False)
    try:
        return Scan.objects.filter(visible).distinct().get(uuid=scan_uuid)
    except Scan.DoesNotExist as exc:
        raise Http404("no such scan") from exc


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
