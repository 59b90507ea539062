"""Reads of the audit trail, for admins only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import AuditEvent, User

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
