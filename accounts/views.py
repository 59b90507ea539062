"""Second-factor enrolment and verification, and the admins' audit trail pages."""

from __future__ import annotations

import base64
import csv
import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods
from django_otp import login as otp_login

from accounts import selectors, services
from accounts.forms import AuditFilterForm, OTPTokenForm
from accounts.http import AuthedHttpRequest
from accounts.otp import confirmed_device
from core.http import client_address
from core.pagination import BoundedPaginator


def _next_url(request: AuthedHttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return "/"


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def otp_setup(request: AuthedHttpRequest) -> HttpResponse:
    """Enrol an authenticator: show the secret and otpauth URI, confirm with a code."""
    if confirmed_device(request.user) is not None:
        return redirect("otp_verify")
    device = services.otp_device_start(user=request.user)
    form = OTPTokenForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid() and services.otp_device_confirm(
            user=request.user, device=device, token=form.cleaned_data["token"], client_address=client_address(request)
        ):
            otp_login(request, device)
            messages.success(request, "Authenticator enrolled.")
            return redirect(_next_url(request))
        if form.is_valid():
            form.add_error("token", "That code does not match; check the clock of your device and try again.")
        status = 400
    context: dict[str, Any] = {
        "form": form,
        "secret": base64.b32encode(device.bin_key).decode(),
        "config_url": device.config_url,
        "next": _next_url(request),
    }
    return render(request, "accounts/otp_setup.html", context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def otp_verify(request: AuthedHttpRequest) -> HttpResponse:
    device = confirmed_device(request.user)
    if device is None:
        return redirect("otp_setup")
    form = OTPTokenForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            ok = device.verify_token(form.cleaned_data["token"])
            services.otp_verify_recorded(user=request.user, ok=ok, client_address=client_address(request))
            if ok:
                otp_login(request, device)
                return redirect(_next_url(request))
            form.add_error("token", "That code is not correct (or was already used).")
        status = 400
    return render(request, "accounts/otp_verify.html", {"form": form, "next": _next_url(request)}, status=status)


def _audit_query(request: AuthedHttpRequest) -> tuple[AuditFilterForm, selectors.AuditFilter | None]:
    form = AuditFilterForm(request.GET or None)
    if request.GET and not form.is_valid():
        return form, None
    data = form.cleaned_data if request.GET else {}
    return form, selectors.AuditFilter(
        action=data.get("action") or "",
        actor=data.get("actor") or "",
        object_type=data.get("object_type") or "",
        object_id=data.get("object_id") or "",
        date_from=data.get("date_from"),
        date_to=data.get("date_to"),
    )


@require_GET
@never_cache
@login_required
def audit_list(request: AuthedHttpRequest) -> HttpResponse:
    form, filters = _audit_query(request)
    events = selectors.audit_events(user=request.user, filters=filters or selectors.AuditFilter())
    if filters is None:
        return render(request, "accounts/audit_list.html", {"form": form, "page": None}, status=400)
    page = BoundedPaginator(events, 50, page_hint=request.GET.get("page")).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    shown = list(page)
    names = selectors.audit_object_names(shown)
    rows = [(e, names[e.id], selectors.audit_values(e.data)) for e in shown]
    context = {"form": form, "page": page, "rows": rows, "query": query.urlencode()}
    return render(request, "accounts/audit_list.html", context)


class _Echo:
    def write(self, value: str) -> str:
        return value


CSV_COLUMNS = [
    "id", "uuid", "created_at", "actor", "action", "object_type", "object_id",
    "data", "client_address", "prev_hash", "hash",
]  # fmt: skip


@require_GET
@never_cache
@login_required
def audit_export(request: AuthedHttpRequest) -> HttpResponse | StreamingHttpResponse:
    form, filters = _audit_query(request)
    events = selectors.audit_events(user=request.user, filters=filters or selectors.AuditFilter())
    if filters is None:
        return render(request, "accounts/audit_list.html", {"form": form, "page": None}, status=400)
    rows = list(events.order_by("id"))
    services.audit_export_recorded(
        acting_user=request.user,
        filters={k: str(v) for k, v in form.cleaned_data.items() if v} if request.GET else {},
        rows=len(rows),
        client_address=client_address(request),
    )
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(CSV_COLUMNS)
        for e in rows:
            yield writer.writerow(
                [
                    e.id,
                    e.uuid,
                    e.created_at.isoformat(),
                    e.actor.username if e.actor else "",
                    e.action,
                    e.object_type,
                    e.object_id,
                    json.dumps(e.data, sort_keys=True),
                    e.client_address or "",
                    e.prev_hash,
                    e.hash,
                ]  # fmt: skip
            )

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="audit-trail.csv"'
    return response
