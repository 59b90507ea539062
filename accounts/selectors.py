"""Reads on accounts, scoped to the user asking."""

from __future__ import annotations

from uuid import UUID

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from accounts.models import ApiToken, AuditEvent, User


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
        raise Http404("no such token") from exc


def audit_events_for_user(*, user: User) -> QuerySet[AuditEvent]:
    """The audit trail is for admins only, and read only."""
    if not user.has_perm("accounts.view_auditevent"):
        raise PermissionDenied("the audit trail is for admins")
    return AuditEvent.objects.select_related("actor").order_by("-created_at", "-id")


def audit_event_get(*, user: User, event_uuid: UUID) -> AuditEvent:
    try:
        return audit_events_for_user(user=user).get(uuid=event_uuid)
    except AuditEvent.DoesNotExist as exc:
        raise Http404("no such audit event") from exc


def user_get_for_admin(*, user: User, user_uuid: UUID) -> User:
    if not user.has_perm("accounts.change_user"):
        raise PermissionDenied("only admins can act for other users")
    try:
        return User.objects.get(uuid=user_uuid)
    except User.DoesNotExist as exc:
        raise Http404("no such user") from exc
