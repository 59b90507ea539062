"""Reads of the hospital integration, scoped to the user."""

from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet

from accounts.models import User
from core.exceptions import NotFound
from diagnostics.models import Exchange, ReviewDecision
from diagnostics.selectors.cases import case_visible


def signed_decisions_for_user(*, user: User) -> QuerySet[ReviewDecision]:
    """Signed decisions of the cases the user may see (clinicians see results once signed)."""
    if not user.is_authenticated or not user.is_active:
        return ReviewDecision.objects.none()
    return ReviewDecision.objects.filter(
        case_visible(user=user, case_field="review_item__prediction__scan__case_id")
    ).select_related(
        "review_item__prediction__scan__case__unit", "review_item__prediction__model_version", "supersedes"
    )


def signed_decision_get(*, user: User, decision_uuid: UUID) -> ReviewDecision:
    try:
        return signed_decisions_for_user(user=user).get(uuid=decision_uuid)
    except ReviewDecision.DoesNotExist as exc:
        raise NotFound("no such report") from exc


def exchanges_recent() -> QuerySet[Exchange]:
    """Every exchange, newest first: an operations log without clinical data (the
    admin page decides who sees it)."""
    return Exchange.objects.select_related("account", "case", "decision").order_by("-created_at", "-id")
