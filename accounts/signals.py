"""Authentication events reach the audit trail through django.contrib.auth's own
signals: they are the only hook that sees every login path (form, admin, API)."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from accounts import services
from accounts.middleware import SESSION_LAST_SEEN, SESSION_LOGIN_AT
from core.http import client_address


@receiver(user_logged_in, dispatch_uid="cancerweb_audit_login")
def _on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        now = time.time()
        request.session[SESSION_LOGIN_AT] = now
        request.session[SESSION_LAST_SEEN] = now
    services.login_recorded(user=user, client_address=client_address(request))


@receiver(user_logged_out, dispatch_uid="cancerweb_audit_logout")
def _on_logout(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if user is not None:
        services.logout_recorded(user=user, client_address=client_address(request))


@receiver(user_login_failed, dispatch_uid="cancerweb_audit_login_failed")
def _on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    services.login_failed_recorded(
        username=str(credentials.get("username") or ""),
        client_address=client_address(request),
        locked_out=bool(getattr(request, "axes_locked_out", False)),
    )
