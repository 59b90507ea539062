"""Pages. Thin: a form or selector in, a service call, a template out."""

from __future__ import annotations

import io
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from PIL import Image

from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION
from diagnostics import selectors, services, storage
from diagnostics.forms import CaseCreateForm, CorrectionForm, ScanUploadForm, SignForm
from diagnostics.models import ReviewDecision


def _client_address(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _incoming(files: list[UploadedFile]) -> list[services.IncomingFile]:
    # Read at most one byte past the cap: enough to know a file is too large
    # without holding an arbitrarily large upload in memory.
    limit = settings.UPLOAD_MAX_BYTES + 1
    return [services.IncomingFile(name=f.name or "", data=f.read(limit)) for f in files]


def _add_upload_errors(form: Any, exc: services.UploadBatchRejected) -> None:
    for name, err in exc.errors:
        form.add_error("files", f"{name}: {err.message} [{err.code}]")
    form.add_error("files", "Nothing was stored. Fix or remove the files above and upload again.")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    if request.user.has_perm(REVIEW_PERMISSION):
        return redirect("review_queue")
    if request.user.has_perm(UPLOAD_PERMISSION):
        return redirect("case_list")
    if request.user.is_staff:
        return redirect("admin:index")
    return render(request, "diagnostics/no_role.html", status=403)


@require_GET
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_list(request: HttpRequest) -> HttpResponse:
    cases = selectors.cases_for_user(user=request.user).prefetch_related("scans__job")
    page = Paginator(cases, 25).get_page(request.GET.get("page"))
    rows = []
    for case in page:
        statuses = [status for _, status in selectors.case_scans_with_status(case=case)]
        rows.append((case, selectors.case_status_summary(statuses), len(statuses)))
    return render(request, "diagnostics/case_list.html", {"page": page, "rows": rows})


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_new(request: HttpRequest) -> HttpResponse:
    form = CaseCreateForm(request.POST or None, request.FILES or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                case = services.case_create(
                    acting_user=request.user,
                    patient_ref=form.cleaned_data["patient_ref"],
                    body_site=form.cleaned_data["body_site"],
                    note=form.cleaned_data["note"],
                    files=_incoming(form.cleaned_data["files"]),
                    client_address=_client_address(request),
                )
            except services.UploadBatchRejected as exc:
                _add_upload_errors(form, exc)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, f"Case created with {case.scans.count()} image(s); analysis is queued.")
                return redirect("case_detail", case_uuid=case.uuid)
        status = 400
    return render(request, "diagnostics/case_new.html", {"form": form}, status=status)


@require_GET
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_detail(request: HttpRequest, case_uuid: UUID) -> HttpResponse:
    case = selectors.case_get(user=request.user, case_uuid=case_uuid)
    return render(request, "diagnostics/case_detail.html", _case_context(case, ScanUploadForm()))


def _case_context(case: Any, form: ScanUploadForm) -> dict[str, Any]:
    scans = selectors.case_scans_with_status(case=case)
    return {
        "case": case,
        "scans": scans,
        "summary": selectors.case_status_summary([s for _, s in scans]),
        "all_done": all(s.code in ("signed", "failed") for _, s in scans),
        "form": form,
    }


@require_GET
@never_cache
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_status_fragment(request: HttpRequest, case_uuid: UUID) -> HttpResponse:
    """The status table alone, polled by the case page so it updates without a reload."""
    case = selectors.case_get(user=request.user, case_uuid=case_uuid)
    return render(request, "diagnostics/_case_status.html", _case_context(case, ScanUploadForm()))


@require_POST
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_upload(request: HttpRequest, case_uuid: UUID) -> HttpResponse:
    case = selectors.case_get(user=request.user, case_uuid=case_uuid)
    form = ScanUploadForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            result = services.scans_upload(
                acting_user=request.user,
                case=case,
                files=_incoming(form.cleaned_data["files"]),
                client_address=_client_address(request),
            )
        except services.UploadBatchRejected as exc:
            _add_upload_errors(form, exc)
        else:
            text = f"{len(result.created)} image(s) uploaded; analysis is queued."
            if result.repeated:
                text += f" {len(result.repeated)} already uploaded to this case, not added again."
            messages.success(request, text)
            return redirect("case_detail", case_uuid=case.uuid)
    return render(request, "diagnostics/case_detail.html", _case_context(case, form), status=400)


@require_POST
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def job_retry(request: HttpRequest, job_uuid: UUID) -> HttpResponse:
    """The case page's "Retry" button on a failed scan."""
    job = selectors.job_get_for_user(user=request.user, job_uuid=job_uuid)
    case = job.scan.case
    try:
        services.job_retry(acting_user=request.user, job=job, client_address=_client_address(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return render(request, "diagnostics/case_detail.html", _case_context(case, ScanUploadForm()), status=409)
    messages.success(request, f"Analysis of {job.scan.original_name or 'the image'} queued again.")
    return redirect("case_detail", case_uuid=case.uuid)


@require_GET
@login_required
def scan_image(request: HttpRequest, scan_uuid: UUID) -> HttpResponseBase:
    """A PNG rendering of the scan (browsers cannot show TIFF), at most 1024 px."""
    scan = selectors.scan_get_for_image(user=request.user, scan_uuid=scan_uuid)
    data = storage.read_bytes(scan.storage_name)
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (1024, 1024))
        rendered = img.convert("RGB")
        rendered.thumbnail((1024, 1024))
    out = io.BytesIO()
    rendered.save(out, format="PNG")
    response = HttpResponse(out.getvalue(), content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@never_cache
@login_required
def review_queue(request: HttpRequest) -> HttpResponse:
    items = selectors.review_queue(user=request.user)
    page = Paginator(items, 25).get_page(request.GET.get("page"))
    template = "diagnostics/_review_rows.html" if request.GET.get("fragment") else "diagnostics/review_queue.html"
    return render(request, template, {"page": page})


@require_http_methods(["GET", "POST"])
@login_required
def review_detail(request: HttpRequest, item_uuid: UUID) -> HttpResponse:
    item = selectors.review_item_get(user=request.user, item_uuid=item_uuid)
    labels = list(item.prediction.labels)
    decisions = list(item.decisions.select_related("supersedes").order_by("signed_at", "id"))
    current = decisions[-1] if decisions else None
    sign_form = SignForm(request.POST or None, labels=labels) if current is None else None
    correct_form = CorrectionForm(request.POST or None, labels=labels) if current is not None else None
    status = 200
    if request.method == "POST":
        form = sign_form or correct_form
        assert form is not None
        if form.is_valid():
            data = form.cleaned_data
            try:
                services.review_sign(
                    acting_user=request.user,
                    review_item=item,
                    outcome=data.get("outcome", ReviewDecision.Outcome.REJECTED),
                    stage=data.get("stage") or "",
                    reason=data.get("reason") or "",
                    password=data["password"],
                    supersedes=current,
                    client_address=_client_address(request),
                )
            except services.SignatureError as exc:
                form.add_error("password", exc.message)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, "Decision signed.")
                next_item = selectors.review_queue(user=request.user).first()
                if next_item is not None and current is None:
                    return redirect("review_detail", item_uuid=next_item.uuid)
                return redirect("review_queue")
        status = 400
    context = {
        "item": item,
        "prediction": item.prediction,
        "case": item.prediction.scan.case,
        "decisions": decisions,
        "current": current,
        "sign_form": sign_form,
        "correct_form": correct_form,
    }
    return render(request, "diagnostics/review_detail.html", context, status=status)
