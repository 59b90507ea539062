"""Second-factor enrolment and verification, the admins' audit trail pages and their
login-lockout and signing-attempt page."""

from __future__ import annotations

import base64
import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
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
from core.exports import csv_writer
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
            locked = services.otp_verify_recorded(
                user=request.user, ok=ok, client_address=client_address(request), session=request.session
            )
            if locked:
                logout(request)
                messages.error(request, "Too many wrong codes: log in again to try more.")
                return redirect("login")
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
    writer = csv_writer(_Echo())

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


@require_http_methods(["GET", "POST"])
@never_cache
@login_required
def lockouts(request: AuthedHttpRequest) -> HttpResponse:
    """Admins: current login lockouts with an unlock button each, and failed signing
    attempts. Unlocking is audited (auth.unlock)."""
    if not request.user.is_staff:
        raise PermissionDenied("the security page is for admins")
    if request.method == "POST":
        username = request.POST.get("username", "")[:150]
        ip_address = request.POST.get("ip_address", "")[:45]
        try:
            removed = services.login_lockout_release(
                acting_user=request.user,
                username=username,
                ip_address=ip_address,
                client_address=client_address(request),
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            who = " at ".join(p for p in (username, ip_address) if p)
            messages.success(request, f"Unlocked {who} ({removed} record(s) removed).")
        return redirect("lockouts")
    context = selectors.security_overview(user=request.user)
    context["login_limit"] = settings.AXES_FAILURE_LIMIT
    context["address_limit"] = settings.LOGIN_ADDRESS_FAILURE_LIMIT
    context["signing_limit"] = settings.SIGNING_MAX_FAILURES
    return render(request, "accounts/lockouts.html", context)
