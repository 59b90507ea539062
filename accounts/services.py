"""Writes on accounts: API tokens. Audited in the same transaction."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit_record
from accounts.models import ApiToken, User

TOKEN_PREFIX = "cw_"  # noqa: S105 - a public prefix that marks the string as a CancerWeb token, not a secret
DEFAULT_TOKEN_DAYS = 30


def hash_token_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _may_manage_tokens_of(acting_user: User, user: User) -> bool:
    return acting_user.pk == user.pk or acting_user.has_perm("accounts.change_user")


@transaction.atomic
def api_token_create(
    *,
    acting_user: User | None,
    user: User,
    name: str,
    expires_in_days: int = DEFAULT_TOKEN_DAYS,
    client_address: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret, which is shown
    once and never stored. ``acting_user`` None means an operator on the command line."""
    if acting_user is not None and not _may_manage_tokens_of(acting_user, user):
        raise PermissionDenied("only admins can create tokens for other users")
    if not user.is_active:
        raise ValidationError({"user": ValidationError("the user is inactive", code="user_inactive")})
    if not 1 <= expires_in_days <= settings.API_TOKEN_MAX_DAYS:
        raise ValidationError(
            {
                "expires_in_days": ValidationError(
                    f"a token lives between 1 and {settings.API_TOKEN_MAX_DAYS} days", code="invalid_expiry"
                )
            }
        )
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken(
        user=user,
        name=name.strip(),
        key_prefix=key[:10],
        key_hash=hash_token_key(key),
        created_by=acting_user,
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days),
    )
    token.full_clean()
    token.save()
    audit_record(
        actor=acting_user,
        action="api_token.create",
        obj=token,
        data={"user": str(user.uuid), "name": token.name, "expires_at": token.expires_at.isoformat()},
        client_address=client_address,
    )
    return token, key


@transaction.atomic
def api_token_revoke(*, acting_user: User, token: ApiToken, client_address: str | None = None) -> ApiToken:
    """Revoke a token now. Revoking twice is a no-op that keeps the first time."""
    if not _may_manage_tokens_of(acting_user, token.user):
        raise PermissionDenied("only admins can revoke other users' tokens")
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=acting_user,
            action="api_token.revoke",
            obj=token,
            data={"user": str(token.user.uuid)},
            client_address=client_address,
        )
    return token
