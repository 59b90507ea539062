"""Token authentication for machines: ``Authorization: Token cw_...`` (or Bearer).
Tokens expire and can be revoked; only their SHA-256 is stored."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from accounts.models import ApiToken, User
from accounts.services import hash_token_key

# Writing last_used_at on every request would make each read a write; once a minute is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenFailed(exceptions.AuthenticationFailed):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(detail=message, code=code)


class ApiTokenAuthentication(BaseAuthentication):
    keywords = ("token", "bearer")

    def authenticate(self, request: Any) -> tuple[User, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].decode(errors="replace").lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise TokenFailed("invalid_token", "Send the header as: Authorization: Token <key>.")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError as exc:
            raise TokenFailed("invalid_token", "The token is not valid.") from exc
        token = ApiToken.objects.select_related("user").filter(key_hash=hash_token_key(key)).first()
        if token is None:
            raise TokenFailed("invalid_token", "The token is not valid.")
        now = timezone.now()
        if token.revoked_at is not None:
            raise TokenFailed("token_revoked", "The token was revoked.")
        if token.expires_at <= now:
            raise TokenFailed("token_expired", "The token has expired; create a new one.")
        if not token.user.is_active:
            raise TokenFailed("user_inactive", "The token's user is inactive.")
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        # Makes DRF answer 401 (with this challenge) rather than 403 to anonymous requests.
        return 'Token realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token cw_...`: create one at POST /api/v1/tokens/ or with `manage.py api_token_create`.",
        }
