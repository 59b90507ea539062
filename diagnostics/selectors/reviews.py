"""Reads of the review queue and review items, for the physicians of the case's care unit."""

from __future__ import annotations

from datetime import date
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION
from core.exceptions import NotFound
from diagnostics.models import (
    BlindedRead,
    ReviewDecision,
    ReviewerPreference,
    ReviewItem,
)
from diagnostics.selectors.cases import case_visible
from diagnostics.selectors.signatures import signature_check
from diagnostics.signatures import SignatureCheck


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
    if not user.is_authenticated or not user.is_active:
        return ReviewItem.objects.none()
    return ReviewItem.objects.filter(case_visible(user=user, case_field="prediction__scan__case_id")).select_related(
        "prediction", "prediction__scan", "prediction__scan__case", "prediction__model_version"
    )


def review_item_get(*, user: User, item_uuid: UUID) -> ReviewItem:
    try:
        return review_items_for_user(user=user).get(uuid=item_uuid)
    except ReviewItem.DoesNotExist as exc:
        raise NotFound("no such review item") from exc


def heatmap_get(*, user: User, item_uuid: UUID) -> str:
    """The storage name of a review item's heat map, for those who may see the item."""
    item = review_item_get(user=user, item_uuid=item_uuid)
    name = item.prediction.heatmap_storage_name
    if not name:
        raise NotFound("this prediction has no heat map")
    return name


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


def _after_in_queue(item: ReviewItem) -> Q:
    """Items that come after ``item`` in review_queue's order (the same five keys)."""
    p = item.prediction
    same_u = Q(prediction__uncertain=p.uncertain)
    same_s = same_u & Q(prediction__stage_rank=p.stage_rank)
    same_c = same_s & Q(prediction__confidence=p.confidence)
    same_t = same_c & Q(created_at=item.created_at)
    return (
        Q(prediction__uncertain__lt=p.uncertain)
        | (same_u & Q(prediction__stage_rank__lt=p.stage_rank))
        | (same_s & Q(prediction__confidence__gt=p.confidence))
        | (same_c & Q(created_at__gt=item.created_at))
        | (same_t & Q(id__gt=item.id))
    )


NEIGHBOUR_WINDOW = 2000


def review_queue_neighbours(*, user: User, item: ReviewItem) -> tuple[ReviewItem | None, ReviewItem | None]:
    """Previous and next pending items in queue order, for the viewer's n / p keys. An
    item already signed has no place in the queue: its "next" is the queue's head.

    Read from the queue's head down to the item (its ordering index, no sort), not
    the first 2,000 items of the queue whatever the item: an item near the top costs
    a few rows. Deeper than NEIGHBOUR_WINDOW items, "next" is the queue's head."""
    queue = review_queue(user=user)
    if item.status != ReviewItem.Status.PENDING:
        return None, queue.first()
    after = _after_in_queue(item)
    upto = list(queue.exclude(after).values_list("uuid", flat=True)[: NEIGHBOUR_WINDOW + 1])
    if not upto or upto[-1] != item.uuid:
        return None, queue.first()
    next_item = queue.filter(after).first()
    previous = queue.get(uuid=upto[-2]) if len(upto) > 1 else None
    return previous, next_item


def reviewer_blinded_first(*, user: User) -> bool:
    pref = ReviewerPreference.objects.filter(user=user).first()
    return bool(pref and pref.blinded_first)


def blinded_read_get(*, user: User, item: ReviewItem) -> BlindedRead | None:
    return BlindedRead.objects.filter(review_item=item, physician=user).first()


def review_item_decisions(*, item: ReviewItem) -> list[ReviewDecision]:
    """The item's signed decisions, oldest first (the last is the current one)."""
    return list(item.decisions.select_related("supersedes").order_by("signed_at", "id"))


def decisions_with_signatures(decisions: list[ReviewDecision]) -> list[tuple[ReviewDecision, SignatureCheck]]:
    return [(d, signature_check(d)) for d in decisions]
