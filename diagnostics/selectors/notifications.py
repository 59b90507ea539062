"""A user's own notifications."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import User
from diagnostics.models import (
    Notification,
)


def notifications_for_user(*, user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(user=user).order_by("-created_at", "-id")
