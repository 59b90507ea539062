"""Typed access to the signed-in user for pages and API views."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from accounts.models import User


class AuthedHttpRequest(HttpRequest):
    """A page request behind ``login_required``: its user is a real user."""

    user: User


def request_user(request: Any) -> User:
    """The signed-in user of a page or API request; a request without one is refused
    (API views reach this only after their authentication and permission checks)."""
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied("sign in first")
    return user
