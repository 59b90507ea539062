"""Reads of the audit trail, for admins only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent, User
from core.exceptions import NotFound

AUDIT_PERMISSION = "accounts.view_auditevent"


@dataclass(frozen=True)
class AuditFilter:
    action: str = ""
    actor: str = ""
    object_type: str = ""
    object_id: str = ""
    date_from: date | None = None
    date_to: date | None = None


def audit_events(*, user: User, filters: AuditFilter) -> QuerySet[AuditEvent]:
    """The trail, newest first, filtered; only for those allowed to read it."""
    if not user.is_authenticated or not user.has_perm(AUDIT_PERMISSION):
        raise PermissionDenied("the audit trail is for admins")
    events = AuditEvent.objects.select_related("actor").order_by("-id")
    if filters.action:
        events = events.filter(action__startswith=filters.action)
    if filters.actor:
        events = events.filter(actor__username=filters.actor)
    if filters.object_type:
        events = events.filter(object_type=filters.object_type)
    if filters.object_id:
        events = events.filter(object_id=filters.object_id)
    utc = timezone.get_fixed_timezone(0)
    if filters.date_from:
        events = events.filter(created_at__gte=datetime.combine(filters.date_from, time.min, tzinfo=utc))
    if filters.date_to:
        end = datetime.combine(filters.date_to + timedelta(days=1), time.min, tzinfo=utc)
        events = events.filter(created_at__lt=end)
    return events


def api_tokens_for_user(*, user: User) -> QuerySet[ApiToken]:
    """A user's own tokens; admins (who manage users) see everybody's."""
    if not user.is_authenticated:
        return ApiToken.objects.none()
    tokens = ApiToken.objects.select_related("user")
    if user.has_perm("accounts.change_user"):
        return tokens.all()
    return tokens.filter(user=user)


def api_token_get(*, user: User, token_uuid: UUID) -> ApiToken:
    try:
        return api_tokens_for_user(user=user).get(uuid=token_uuid)
    except ApiToken.DoesNotExist as exc:
        raise NotFound("no such token") from exc


def audit_events_for_user(*, user: User) -> QuerySet[AuditEvent]:
    """The audit trail is for admins only, and read only."""
    if not user.has_perm("accounts.view_auditevent"):
        raise PermissionDenied("the audit trail is for admins")
    return AuditEvent.objects.select_related("actor").order_by("-created_at", "-id")


def audit_event_get(*, user: User, event_uuid: UUID) -> AuditEvent:
    try:
        return audit_events_for_user(user=user).get(uuid=event_uuid)
    except AuditEvent.DoesNotExist as exc:
        raise NotFound("no such audit event") from exc


def security_overview(*, user: User) -> dict[str, Any]:
    """For admins: who is locked out of logging in now, and the latest failed and
    locked signing attempts (21 CFR 11.300(d): attempts at unauthorised use reported)."""
    from accounts.lockout import current_lockouts  # axes' models need the app registry

    if not (user.is_authenticated and user.is_staff and user.has_perm("accounts.change_user")):
        raise PermissionDenied("the security page is for admins")
    signing = (
        AuditEvent.objects.select_related("actor")
        .filter(action__in=["review.sign_failed", "review.sign_locked"])
        .order_by("-id")[:100]
    )
    return {"lockouts": current_lockouts(), "signing_attempts": list(signing)}
