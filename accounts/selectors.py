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


# Objects the audit page names and links (administrative records, which admins manage).
# Clinical records (cases, scans, predictions, reviews) are shown by kind and a short id
# with a link to their own history in the trail: admins see no clinical data.
_AUDIT_NAMED = {
    "accounts.user": ("username", "admin:accounts_user_change"),
    "accounts.careunit": ("name", "admin:accounts_careunit_change"),
    "diagnostics.modelversion": (None, "admin:diagnostics_modelversion_change"),
    "accounts.apitoken": ("name", None),
}


@dataclass(frozen=True)
class AuditObject:
    kind: str  # "Case", "Model version", ...
    name: str  # what a person recognises: a user name, a model's name and version, a short id
    admin_url: str = ""  # the record in the administration, for administrative records
    full_id: str = ""


def audit_object_names(events: list[AuditEvent]) -> dict[int, AuditObject]:
    """For a page of audit events, each event's object by kind and name, looked up in
    one query per kind of administrative record."""
    from django.apps import apps
    from django.urls import NoReverseMatch, reverse

    wanted: dict[str, set[str]] = {}
    for e in events:
        if e.object_type in _AUDIT_NAMED:
            wanted.setdefault(e.object_type, set()).add(e.object_id)
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for label, ids in wanted.items():
        attr, url_name = _AUDIT_NAMED[label]
        try:
            model = apps.get_model(label)
        except LookupError:
            continue
        uuid_ids = [i for i in ids if _is_uuid(i)]
        rows = model._default_manager.filter(uuid__in=uuid_ids) if uuid_ids else []
        for row in rows:
            name = str(getattr(row, attr)) if attr else str(row)
            url = ""
            if url_name:
                try:
                    url = reverse(url_name, args=[row.pk])
                except NoReverseMatch:
                    url = ""
            found[(label, str(row.uuid))] = (name, url)
    result = {}
    for e in events:
        kind = _kind(e.object_type)
        name, url = found.get((e.object_type, e.object_id), ("", ""))
        if not name:
            name = e.object_id[:8] if _is_uuid(e.object_id) else e.object_id
        result[e.id] = AuditObject(kind=kind, name=name, admin_url=url, full_id=e.object_id)
    return result


def _kind(object_type: str) -> str:
    model = object_type.split(".")[-1]
    words = {
        "user": "User", "careunit": "Care unit", "modelversion": "Model version", "apitoken": "API token",
        "case": "Case", "scan": "Scan", "inferencejob": "Analysis job", "prediction": "Prediction",
        "reviewitem": "Review item", "reviewdecision": "Signed decision", "blindedread": "Blinded read",
        "slideupload": "Slide upload", "auditevent": "Audit trail",
    }  # fmt: skip
    return words.get(model, model.replace("_", " ").capitalize())


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def audit_values(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """An event's recorded values as (name, text) pairs a person can read: nested values
    by their dotted name, lists joined, nothing shown as a Python or JSON literal."""
    if isinstance(data, dict):
        pairs: list[tuple[str, str]] = []
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                pairs.extend(audit_values(value, name))
            else:
                pairs.append((name.replace("_", " "), _text(value)))
        return pairs
    return [(prefix or "value", _text(data))]


def _text(value: Any) -> str:
    if value is None or value == "" or value == {} or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_text(v)}" for k, v in value.items())
    return str(value)


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
