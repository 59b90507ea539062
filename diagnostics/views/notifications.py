"""The notification list and marking notifications read."""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthedHttpRequest
from diagnostics.selectors.notifications import notifications_for_user
from diagnostics.services.notifications import notification_open as notification_open_service
from diagnostics.services.notifications import notifications_mark_read


@require_GET
@never_cache
@login_required
def notification_list(request: AuthedHttpRequest) -> HttpResponse:
    notes = notifications_for_user(user=request.user)
    page = Paginator(notes, 25).get_page(request.GET.get("page"))
    return render(request, "diagnostics/notifications.html", {"page": page})


@require_POST
@login_required
def notification_read(request: AuthedHttpRequest) -> HttpResponse:
    raw = request.POST.get("notification", "")
    target: UUID | None = None
    if raw:
        try:
            target = UUID(raw)
        except ValueError:
            return HttpResponse("notification must be a UUID", status=400, content_type="text/plain")
    notifications_mark_read(acting_user=request.user, notification_uuid=target)
    return redirect("notification_list")


@require_GET
@never_cache
@login_required
def notification_open(request: AuthedHttpRequest, notification_uuid: UUID) -> HttpResponse:
    """Where a notification's link goes: marks it read, then on to what it is about."""
    return redirect(notification_open_service(acting_user=request.user, notification_uuid=notification_uuid))
