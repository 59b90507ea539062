"""Login lockout: django-axes counts failures per user name *and* address together, so
one person's typos at a shared hospital workstation (or behind a NAT) lock only that
person there; an address is locked as a whole only at a much higher count of failures
across all names (someone trying many accounts from one machine)."""

from __future__ import annotations

from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_ip_address
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest
from django.utils import timezone


def _recent_attempts() -> Any:
    return AccessAttempt.objects.filter(attempt_time__gte=timezone.now() - settings.AXES_COOLOFF_TIME)


def address_failures(ip_address: str | None) -> int:
    """Failed logins from this address, any user name, within the cool-off time."""
    if not ip_address:
        return 0
    total = _recent_attempts().filter(ip_address=ip_address).aggregate(n=Sum("failures_since_start"))["n"]
    return int(total or 0)


class LockoutHandler(AxesDatabaseHandler):
    """axes' database handler plus the per-address limit (LOGIN_ADDRESS_FAILURE_LIMIT)."""

    def is_locked(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> bool:
        if super().is_locked(request, credentials):
            return True
        return self._address_locked(request)

    def user_login_failed(self, sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any) -> None:
        super().user_login_failed(sender, credentials, request, **kwargs)
        # Like axes' own limit: the failure that reaches the address limit already locks.
        if request is not None and not getattr(request, "axes_locked_out", False) and self._address_locked(request):
            request.axes_locked_out = True
            request.axes_credentials = credentials
            user_locked_out.send("axes", request=request, username=None, ip_address=request.axes_ip_address)

    @staticmethod
    def _address_locked(request: HttpRequest) -> bool:
        ip_address = getattr(request, "axes_ip_address", None) or get_client_ip_address(request)
        return address_failures(ip_address) >= settings.LOGIN_ADDRESS_FAILURE_LIMIT


def current_lockouts() -> list[dict[str, Any]]:
    """Who is locked out now: user name and address pairs at the per-name limit, and
    addresses at the per-address limit."""
    rows: list[dict[str, Any]] = []
    for attempt in (
        _recent_attempts().filter(failures_since_start__gte=settings.AXES_FAILURE_LIMIT).order_by("-attempt_time")
    ):
        rows.append(
            {
                "username": attempt.username or "",
                "ip_address": attempt.ip_address or "",
                "failures": attempt.failures_since_start,
                "last_attempt": attempt.attempt_time,
                "scope": "name at address",
            }
        )
    by_address = (
        _recent_attempts()
        .values("ip_address")
        .annotate(n=Sum("failures_since_start"))
        .filter(n__gte=settings.LOGIN_ADDRESS_FAILURE_LIMIT)
    )
    for row in by_address:
        rows.append(
            {
                "username": "",
                "ip_address": row["ip_address"] or "",
                "failures": row["n"],
                "last_attempt": None,
                "scope": "whole address",
            }
        )
    return rows
