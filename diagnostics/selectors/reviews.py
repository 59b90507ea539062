"""Reads of the review queue and review items, for the physicians of the case's care unit."""

from __future__ import annotations

from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import BooleanField, Case, Exists, Expression, OuterRef, Q, QuerySet, Value, When

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION
from core.exceptions import NotFound
from diagnostics.ml.ood import REASON_TEXT
from diagnostics.models import (
    BlindedRead,
    Prediction,
    ReviewDecision,
    ReviewerPreference,
    ReviewItem,
    queue_keys,
)
from diagnostics.selectors.cases import WorklistFilter, case_visible, worklist_filtered
from diagnostics.selectors.signatures import signature_check
from diagnostics.signatures import SignatureCheck


def _require_reviewer(user: User) -> None:
    if not user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("the review queue is for physicians")


def review_queue(*, user: User) -> QuerySet[ReviewItem]:
    """Pending items: inputs outside what the model was trained on first, then uncertain
    predictions, then the rest; within each group most advanced predicted stage, then
    least confident, then oldest (`diagnostics.models.queue_keys`).

    Uncertain items go first overall, not only within their stage: sorting by stage
    trusts the predicted stage, and an uncertain prediction's stage is exactly what the
    model could not tell, so ranking it there could bury a malignant case under
    confident benign ones. Outside inputs have no stage or confidence to sort by (both
    are withheld), so among themselves they go oldest first."""
    _require_reviewer(user)
    attention, stage, confidence = queue_keys("prediction__")
    return (
        review_items_for_user(user=user)
        .filter(status=ReviewItem.Status.PENDING)
        .select_related("prediction", "prediction__scan", "prediction__scan__case", "prediction__model_version")
        .annotate(q_attention=attention, q_stage=stage, q_confidence=confidence)
        .order_by("-q_attention", "-q_stage", "q_confidence", "created_at", "id")
    )


def review_items_for_user(*, user: User) -> QuerySet[ReviewItem]:
    """Items of the cases the physician may see: the queue of their care units. Each
    carries ``ai_hidden`` (see `_ai_hidden`) and ``ai_withheld`` (see `_ai_withheld`),
    which every door obeys."""
    _require_reviewer(user)
    return (
        ReviewItem.objects.filter(case_visible(user=user, case_field="prediction__scan__case_id"))
        .select_related("prediction", "prediction__scan", "prediction__scan__case", "prediction__model_version")
        .annotate(ai_hidden=_ai_hidden(user), ai_withheld=_ai_withheld())
    )


def _ai_withheld() -> Expression:
    """An input outside what the model was trained on (too small, nearly blank, or far
    from its training images): its stage, probabilities and heat map are no suggestion
    at all, and stay withheld from everyone; the flag and its reasons are shown."""
    return Case(
        When(prediction__out_of_distribution=True, then=Value(True)),
        default=Value(False),
        output_field=BooleanField(),
    )


def _ai_hidden(user: User) -> Expression:
    """Blinded-first reading: for a physician who chose it, the AI's answer (stage,
    probabilities, heat map) stays hidden on a pending item until they have recorded a
    stage of their own, so the suggestion cannot anchor the read. A signed item has
    nothing left to anchor."""
    if not reviewer_blinded_first(user=user):
        return Value(False, output_field=BooleanField())
    own_read = BlindedRead.objects.filter(review_item=OuterRef("pk"), physician=user)
    return Case(
        When(Q(status=ReviewItem.Status.PENDING) & ~Exists(own_read), then=Value(True)),
        default=Value(False),
        output_field=BooleanField(),
    )


def ood_reason_texts(prediction: Prediction) -> list[str]:
    """Why a prediction's input is outside what its model was trained on, in words."""
    return [REASON_TEXT.get(code, code) for code in prediction.ood_reasons or []]


def review_item_get(*, user: User, item_uuid: UUID) -> ReviewItem:
    try:
        return review_items_for_user(user=user).get(uuid=item_uuid)
    except ReviewItem.DoesNotExist as exc:
        raise NotFound("no such review item") from exc


def review_item_ai_hidden(*, user: User, item: ReviewItem) -> bool:
    """Whether the AI's answer on this item is hidden from this physician (blinded-first;
    see `_ai_hidden`). Asked afresh, so it holds for an item not read through this module."""
    hidden = (
        ReviewItem.objects.filter(pk=item.pk)
        .annotate(ai_hidden=_ai_hidden(user))
        .values_list("ai_hidden", flat=True)
        .get()
    )
    return bool(hidden)


def heatmap_get(*, user: User, item_uuid: UUID) -> str:
    """The storage name of a review item's heat map, for those who may see the item."""
    item = review_item_get(user=user, item_uuid=item_uuid)
    if item.ai_hidden:  # type: ignore[attr-defined]  # annotated by review_items_for_user
        raise PermissionDenied("record your own stage first; the heat map is shown after that")
    if item.ai_withheld:  # type: ignore[attr-defined]  # annotated by review_items_for_user
        raise NotFound("this input is outside what the model was trained on: it has no heat map to show")
    name = item.prediction.heatmap_storage_name
    if not name:
        raise NotFound("this prediction has no heat map")
    return name


def review_queue_filtered(*, user: User, filters: WorklistFilter) -> QuerySet[ReviewItem]:
    items = review_queue(user=user)
    if filters.stage:
        # The model's stage: never a way to learn an answer that blinded-first hides.
        items = items.filter(prediction__predicted_label=filters.stage, ai_hidden=False, ai_withheld=False)  # type: ignore[misc]  # annotated above
    return worklist_filtered(items, filters, case="prediction__scan__case")


def _after_in_queue(item: ReviewItem, keys: tuple[int, float, float]) -> Q:
    """Items that come after ``item`` in review_queue's order (the same five keys, on
    the queue's annotations; ``keys`` are the item's own three)."""
    attention, stage, confidence = keys
    same_a = Q(q_attention=attention)
    same_s = same_a & Q(q_stage=stage)
    same_c = same_s & Q(q_confidence=confidence)
    same_t = same_c & Q(created_at=item.created_at)
    return (
        Q(q_attention__lt=attention)
        | (same_a & Q(q_stage__lt=stage))
        | (same_s & Q(q_confidence__gt=confidence))
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
    keys = queue.filter(pk=item.pk).values_list("q_attention", "q_stage", "q_confidence").first()  # type: ignore[misc]  # annotated by review_queue
    if keys is None:  # not in this physician's queue
        return None, queue.first()
    after = _after_in_queue(item, keys)
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
