"""Session limits, the second-factor gate and the security headers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import Resolver404, resolve, reverse

from accounts.otp import confirmed_device, requires_otp

SESSION_LOGIN_AT = "cw_login_at"
SESSION_LAST_SEEN = "cw_last_seen"
# Writing last-seen on every request would write the session row on every poll; a
# minute's granularity is plenty against a 30-minute limit.
LAST_SEEN_RESOLUTION_S = 60

# Pages a logged-in user without a verified second factor may still reach.
OTP_OPEN_URL_NAMES = frozenset({"login", "logout", "otp_verify", "otp_setup"})


class SessionTimeoutMiddleware:
    """Ends a session after 30 minutes without a request or 12 hours after login."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            now = time.time()
            session = request.session
            login_at = session.setdefault(SESSION_LOGIN_AT, now)
            last_seen = session.get(SESSION_LAST_SEEN, now)
            idle = now - last_seen > settings.SESSION_IDLE_TIMEOUT_SECONDS
            expired = now - login_at > settings.SESSION_ABSOLUTE_TIMEOUT_SECONDS
            if idle or expired:
                logout(request)
                messages.info(request, "Your session ended after inactivity; please log in again.")
                return HttpResponseRedirect(f"{reverse('login')}?{urlencode({'next': request.get_full_path()})}")
            if now - last_seen >= LAST_SEEN_RESOLUTION_S or SESSION_LAST_SEEN not in session:
                session[SESSION_LAST_SEEN] = now
        return self.get_response(request)


class OTPRequiredMiddleware:
    """Physicians and admins reach nothing but the second-factor pages until they
    have verified a TOTP code in this session (or enrolled a device)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        # django-otp's OTPMiddleware (earlier in the chain) adds is_verified to the user.
        if user.is_authenticated and not user.is_verified() and requires_otp(user):  # type: ignore[attr-defined]  # set by OTPMiddleware
            try:
                name = resolve(request.path_info).url_name
            except Resolver404:
                name = None
            if name not in OTP_OPEN_URL_NAMES:
                target = "otp_verify" if confirmed_device(user) else "otp_setup"
                return HttpResponseRedirect(f"{reverse(target)}?{urlencode({'next': request.get_full_path()})}")
        return self.get_response(request)


class SecurityHeadersMiddleware:
    """Content-Security-Policy and Permissions-Policy on every response (Django's
    SecurityMiddleware sets HSTS, nosniff and the referrer policy; clickjacking
    middleware sets X-Frame-Options)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # A fresh nonce per response, for templates as {{ request.csp_nonce }}.
        nonce = secrets.token_urlsafe(16)
        request.csp_nonce = nonce  # type: ignore[attr-defined]  # read by templates
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY.format(nonce=nonce))
        response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response
