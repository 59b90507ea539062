"""Who needs a second factor, and the TOTP devices that give it."""

from __future__ import annotations

from django.conf import settings
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION

# The demo's published accounts (accounts/management/commands/demo_setup.py). They may
# skip the second factor only when the whole site runs as the demo.
DEMO_USERNAMES = frozenset({"clinician", "physician", "admin"})


def requires_otp(user: User) -> bool:
    """Physicians (who sign results) and admins (who manage users and the audit
    trail) must present a second factor."""
    if not user.is_authenticated:
        return False
    if settings.OTP_DEMO_EXEMPT and user.username in DEMO_USERNAMES:
        return False
    return bool(user.is_staff or user.is_superuser or user.has_perm(REVIEW_PERMISSION))


def confirmed_device(user: User) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("id").first()
