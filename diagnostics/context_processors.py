from __future__ import annotations

from django.http import HttpRequest

from diagnostics.selectors.notifications import notifications_for_user


def notifications(request: HttpRequest) -> dict[str, int]:
    """The bell's unread count on every page."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"unread_notifications": 0}
    return {"unread_notifications": notifications_for_user(user=user).filter(read_at__isnull=True).count()}
