"""Reads of cases, scans and jobs, always scoped to the user asking: `cases_for_user` is
the one place that decides which cases a user sees."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from uuid import UUID

from django.contrib.auth.models import Permission
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery

from accounts.models import User
from core.exceptions import NotFound
from diagnostics.models import (
    Case,
    CaseGroupObjectPermission,
    CaseUserObjectPermission,
    InferenceJob,
    ReviewDecision,
    ReviewItem,
    Scan,
)
from diagnostics.selectors.signatures import signature_check
from diagnostics.signatures import SignatureCheck

VIEW_CASE = "diagnostics.view_case"


def case_visible(*, user: User, case_field: str = "pk") -> Q:
    """The condition "the user may see this row's case", for a queryset of cases
    (``case_field="pk"``) or of rows that lead to one (``"prediction__scan__case_id"``).

    Only object permissions count: those granted to the user's care-unit groups when
    the case was created, and any granted to the user for a single case. A global
    `view_case` permission (or superuser status) never widens it, so an admin sees no
    clinical data unless granted.

    Written as EXISTS on the row's own case id, not `case IN (every permitted case)`:
    PostgreSQL then walks the list's ordering index and checks each row's permission
    row (an index lookup) until the page is full, instead of hashing tens of thousands
    of permitted ids first (bench/bench_pages.py: 100k cases). The per-user grants are
    added only for a user who holds one: an EXISTS inside an OR is planned as a hash
    of every permitted case again (1,000x slower at 100k), and few users hold any."""
    view_case = Permission.objects.filter(codename="view_case", content_type__app_label="diagnostics").values("id")
    via_unit = CaseGroupObjectPermission.objects.filter(
        content_object_id=OuterRef(case_field),
        permission_id=Subquery(view_case[:1]),
        group_id__in=user.groups.values("id"),
    )
    visible = Q(Exists(via_unit))
    if CaseUserObjectPermission.objects.filter(user_id=user.pk).exists():
        via_user = CaseUserObjectPermission.objects.filter(
            content_object_id=OuterRef(case_field), permission_id=Subquery(view_case[:1]), user_id=user.pk
        )
        visible |= Q(Exists(via_user))
    return visible


def cases_for_user(*, user: User) -> QuerySet[Case]:
    """Cases the user may see, decided here (`case_visible`) for every page and the API."""
    if not user.is_authenticated or not user.is_active:
        return Case.objects.none()
    return Case.objects.filter(case_visible(user=user)).order_by("-created_at", "-id")


def case_get(*, user: User, case_uuid: UUID) -> Case:
    try:
        return cases_for_user(user=user).get(uuid=case_uuid)
    except Case.DoesNotExist as exc:
        raise NotFound("no such case") from exc


@dataclass(frozen=True)
class ScanStatus:
    code: str  # queued | running | awaiting_review | signed | failed
    label: str
    decision: ReviewDecision | None = None
    signature: SignatureCheck | None = None  # of the decision, when there is one
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


def scan_status(scan: Scan, *, with_signature: bool = True) -> ScanStatus:
    """What the clinician sees: the job's progress, then the review, never the AI's answer.
    Lists that show only the status leave the signature check (a query) out."""
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
    signature = signature_check(decision) if with_signature else None
    return ScanStatus("signed", "Signed", decision=decision, signature=signature)


def case_rows_with_status(*, cases: list[Case]) -> list[tuple[Case, str, int]]:
    """(case, status summary, number of images) for a page of the worklist, with a fixed
    number of queries whatever the page holds (not two or three per row)."""
    scans = (
        Scan.objects.filter(case__in=cases)
        .select_related("job", "prediction", "prediction__review_item")
        .prefetch_related("prediction__review_item__decisions", "prediction__review_item__decisions__superseded_by")
    )
    by_case: dict[int, list[ScanStatus]] = {case.pk: [] for case in cases}
    for scan in scans:
        by_case[scan.case_id].append(scan_status(scan, with_signature=False))
    return [(case, case_status_summary(by_case[case.pk]), len(by_case[case.pk])) for case in cases]


def case_scans_with_status(*, case: Case) -> list[tuple[Scan, ScanStatus]]:
    scans = case.scans.select_related(
        "job", "prediction", "prediction__review_item", "prediction__model_version"
    ).prefetch_related("prediction__review_item__decisions", "prediction__review_item__decisions__superseded_by")
    return [(scan, scan_status(scan)) for scan in scans]


_SUMMARY_LABELS = {
    "failed": "Failed",
    "queued": "Queued",
    "running": "Running",
    "awaiting_review": "Awaiting review",
    "signed": "Signed",
}
_SUMMARY_PARTS = [("signed", "signed"), ("awaiting_review", "awaiting review"), ("running", "running"),
                  ("queued", "queued"), ("failed", "failed")]  # fmt: skip


def case_status_summary(statuses: list[ScanStatus]) -> str:
    """One word when every image is at the same step ("Awaiting review"); otherwise
    how many images are where, signed first ("2 of 3 images signed; 1 awaiting review"),
    so a partly signed case never reads as if nothing were signed."""
    if not statuses:
        return "No images"
    counts = {code: sum(1 for s in statuses if s.code == code) for code, _ in _SUMMARY_PARTS}
    present = [(code, words) for code, words in _SUMMARY_PARTS if counts[code]]
    if len(present) == 1:
        return _SUMMARY_LABELS[present[0][0]]
    total = len(statuses)
    first_code, first_words = present[0]
    parts = [f"{counts[first_code]} of {total} images {first_words}"]
    parts += [f"{counts[code]} {words}" for code, words in present[1:]]
    return "; ".join(parts)


def _scans_where(**lookups: object) -> Exists:
    return Exists(Scan.objects.filter(case=OuterRef("pk"), **lookups))


@dataclass(frozen=True)
class WorklistFilter:
    """What a worklist (the case list, the review queue) is narrowed by."""

    stage: str = ""
    date_from: date | None = None
    date_to: date | None = None
    search: str = ""  # part of the case reference
    unit: str = ""  # a care unit's uuid


def worklist_filtered(qs: QuerySet[Any], filters: WorklistFilter, *, case: str = "") -> QuerySet[Any]:
    """The filters both worklists share: creation date, case reference and care unit.
    ``case`` is the path from the listed rows to their case ("" for cases themselves)."""
    to_case = f"{case}__" if case else ""
    if filters.date_from:
        qs = qs.filter(created_at__date__gte=filters.date_from)
    if filters.date_to:
        qs = qs.filter(created_at__date__lte=filters.date_to)
    if filters.search:
        qs = qs.filter(**{f"{to_case}patient_ref__icontains": filters.search})
    if filters.unit:
        qs = qs.filter(**{f"{to_case}unit__uuid": filters.unit})
    return qs


def cases_filtered(*, user: User, filters: WorklistFilter, status: str = "") -> QuerySet[Case]:
    """The user's cases narrowed by the worklist's filters. ``status`` matches the case
    summary (a case is as far along as its least advanced scan), so the conditions
    exclude every less advanced state. The filter's stage is the physician's signed stage."""
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
    if filters.stage:
        current = ReviewDecision.objects.filter(
            review_item__prediction__scan__case=OuterRef("pk"), stage=filters.stage, superseded_by__isnull=True
        )
        cases = cases.filter(Exists(current))
    return worklist_filtered(cases, filters)


def scans_for_user(*, user: User) -> QuerySet[Scan]:
    """Scans of the cases the user may see."""
    if not user.is_authenticated or not user.is_active:
        return Scan.objects.none()
    return Scan.objects.filter(case_visible(user=user, case_field="case_id")).select_related("case", "job")


def scan_get(*, user: User, scan_uuid: UUID) -> Scan:
    try:
        return scans_for_user(user=user).get(uuid=scan_uuid)
    except Scan.DoesNotExist as exc:
        raise NotFound("no such scan") from exc


def jobs_for_user(*, user: User) -> QuerySet[InferenceJob]:
    """Inference jobs of the scans of the cases the user may see."""
    if not user.is_authenticated or not user.is_active:
        return InferenceJob.objects.none()
    return (
        InferenceJob.objects.filter(case_visible(user=user, case_field="scan__case_id"))
        .select_related("scan", "scan__case")
        .order_by("-created_at", "-id")
    )


def job_get(*, user: User, job_uuid: UUID) -> InferenceJob:
    try:
        return jobs_for_user(user=user).get(uuid=job_uuid)
    except InferenceJob.DoesNotExist as exc:
        raise NotFound("no such job") from exc
