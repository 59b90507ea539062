"""Pages for clinicians: worklist, new case, case page with uploads and live status,
retry, scan images. Thin: a form or selector in, a service call, a template out."""

from __future__ import annotations

import io
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthedHttpRequest
from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION
from accounts.services import user_units
from core.http import client_address, not_modified, worklist_queries
from core.pagination import BoundedPaginator
from diagnostics.forms import (
    CaseCreateForm,
    CaseFilterForm,
    ScanUploadForm,
)
from diagnostics.intake import imaging, storage
from diagnostics.intake.slides import accepted_slide_extensions
from diagnostics.intake.validation import accepted_extensions
from diagnostics.models import Scan
from diagnostics.selectors.cases import (
    case_get,
    case_rows_with_status,
    case_scans_with_status,
    case_status_summary,
    cases_filtered,
    job_get,
)
from diagnostics.selectors.model_registry import active_tasks, stage_labels_known
from diagnostics.selectors.worklists import worklist_etag
from diagnostics.services.cases import (
    UploadBatchRejected,
    case_create,
    case_open,
    incoming_files,
    scan_open,
    scans_upload,
)
from diagnostics.services.jobs import job_retry

# A "queued" message is true only until the worker starts: the case page's poll
# (static/js/poll.js) removes messages with this tag once no image of the case is queued.
ANALYSIS_QUEUED_TAG = "analysis-queued"


def _add_upload_errors(form: Any, exc: UploadBatchRejected) -> None:
    for name, err in exc.errors:
        form.add_error("files", f"{name}: {err.message} [{err.code}]")
    form.add_error("files", "Nothing was stored. Fix or remove the files above and upload again.")


@login_required
def home(request: AuthedHttpRequest) -> HttpResponse:
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
def case_list(request: AuthedHttpRequest) -> HttpResponse:
    etag = None
    if request.GET.get("fragment"):  # the 2 s poll: nothing changed in the units, nothing to run
        etag = worklist_etag(user=request.user, kind="cases", query=request.GET.urlencode())
        if (unchanged := not_modified(request, etag)) is not None:
            return unchanged
    form = CaseFilterForm(request.GET, stages=stage_labels_known(), units=user_units(user=request.user))
    if not form.is_valid():
        return render(request, "diagnostics/case_list.html", {"filter_form": form, "rows": []}, status=400)
    data = form.cleaned_data
    cases = cases_filtered(user=request.user, filters=form.worklist_filter(), status=data["status"])
    page = BoundedPaginator(cases, 25, page_hint=data["page"] or 1).get_page(data["page"] or 1)
    rows = case_rows_with_status(cases=list(page))
    context = {"page": page, "rows": rows, "filter_form": form, **worklist_queries(request)}
    template = "diagnostics/_case_rows.html" if request.GET.get("fragment") else "diagnostics/case_list.html"
    response = render(request, template, context)
    if etag:
        response["ETag"] = etag
    return response


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_new(request: AuthedHttpRequest) -> HttpResponse:
    form = CaseCreateForm(
        request.POST or None, request.FILES or None, units=user_units(user=request.user), tasks=active_tasks()
    )
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                case = case_create(
                    acting_user=request.user,
                    patient_ref=form.cleaned_data["patient_ref"],
                    body_site=form.cleaned_data["body_site"],
                    note=form.cleaned_data["note"],
                    task=form.cleaned_data["task"],
                    files=incoming_files(form.cleaned_data["files"]),
                    client_address=client_address(request),
                    unit=form.cleaned_data.get("unit"),
                )
            except UploadBatchRejected as exc:
                _add_upload_errors(form, exc)
            except ValidationError as exc:
                # Next to the field it names (the pseudonym rule, the unit, the task).
                by_field = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
                for field, errors in by_field.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                messages.success(
                    request,
                    f"Case created with {case.scans.count()} image(s); analysis is queued.",
                    extra_tags=ANALYSIS_QUEUED_TAG,
                )
                return redirect("case_detail", case_uuid=case.uuid)
        status = 400
    return render(request, "diagnostics/case_new.html", {"form": form}, status=status)


@require_GET
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_detail(request: AuthedHttpRequest, case_uuid: UUID) -> HttpResponse:
    case = case_open(acting_user=request.user, case_uuid=case_uuid, client_address=client_address(request))
    return render(request, "diagnostics/case_detail.html", _case_context(case, ScanUploadForm()))


@require_GET
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_images(request: AuthedHttpRequest, case_uuid: UUID) -> HttpResponse:
    """Every image of a case side by side, each with its file name and status; a
    physician reaches each one's review from here. No AI answer is shown."""
    case = case_open(acting_user=request.user, case_uuid=case_uuid, client_address=client_address(request))
    scans = case_scans_with_status(case=case)
    reviewer = request.user.has_perm(REVIEW_PERMISSION)
    return render(request, "diagnostics/case_images.html", {"case": case, "scans": scans, "reviewer": reviewer})


def _case_context(case: Any, form: ScanUploadForm) -> dict[str, Any]:
    scans = case_scans_with_status(case=case)
    return {
        "case": case,
        "scans": scans,
        "summary": case_status_summary([s for _, s in scans]),
        "queued_count": sum(1 for _, s in scans if s.code == "queued"),
        "all_done": all(s.code in ("signed", "failed") for _, s in scans),
        "form": form,
        # The upload page's client-side pre-checks; the server stays the authority.
        "upload_max_bytes": settings.UPLOAD_MAX_BYTES,
        "upload_max_files": settings.UPLOAD_MAX_FILES,
        "upload_extensions": ",".join(accepted_extensions()),
        "slide_max_bytes": settings.SLIDE_UPLOAD_MAX_BYTES,
        "slide_chunk_bytes": settings.SLIDE_CHUNK_BYTES,
        "slide_extensions": ",".join(accepted_slide_extensions()),
    }


@require_GET
@never_cache
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_status_fragment(request: AuthedHttpRequest, case_uuid: UUID) -> HttpResponse:
    """The status table alone, polled by the case page so it updates without a reload."""
    case = case_get(user=request.user, case_uuid=case_uuid)
    return render(request, "diagnostics/_case_status.html", _case_context(case, ScanUploadForm()))


@require_POST
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_upload(request: AuthedHttpRequest, case_uuid: UUID) -> HttpResponse:
    case = case_get(user=request.user, case_uuid=case_uuid)
    form = ScanUploadForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            result = scans_upload(
                acting_user=request.user,
                case=case,
                files=incoming_files(form.cleaned_data["files"]),
                client_address=client_address(request),
            )
        except UploadBatchRejected as exc:
            _add_upload_errors(form, exc)
        else:
            text = f"{len(result.created)} image(s) uploaded; analysis is queued."
            if result.repeated:
                text += f" {len(result.repeated)} already uploaded to this case, not added again."
            messages.success(request, text, extra_tags=ANALYSIS_QUEUED_TAG)
            return redirect("case_detail", case_uuid=case.uuid)
    return render(request, "diagnostics/case_detail.html", _case_context(case, form), status=400)


@require_POST
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def job_retry_page(request: AuthedHttpRequest, job_uuid: UUID) -> HttpResponse:
    """The case page's "Retry" button on a failed scan."""
    job = job_get(user=request.user, job_uuid=job_uuid)
    case = job.scan.case
    try:
        job_retry(acting_user=request.user, job=job, client_address=client_address(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return render(request, "diagnostics/case_detail.html", _case_context(case, ScanUploadForm()), status=409)
    messages.success(
        request, f"Analysis of {job.scan.original_name or 'the image'} queued again.", extra_tags=ANALYSIS_QUEUED_TAG
    )
    return redirect("case_detail", case_uuid=case.uuid)


@require_GET
@login_required
def scan_image(request: AuthedHttpRequest, scan_uuid: UUID) -> HttpResponseBase:
    """A PNG rendering of the scan (browsers cannot show TIFF or DICOM), at most 1024 px."""
    return _scan_png(request, scan_uuid, max_side=1024)


THUMBNAIL_PX = 128


@require_GET
@login_required
def scan_thumbnail(request: AuthedHttpRequest, scan_uuid: UUID) -> HttpResponseBase:
    """A small rendering for the worklists' rows (a page of 25 rows decodes 25 small images,
    not 25 full ones). Opening it is audited like the full image."""
    return _scan_png(request, scan_uuid, max_side=THUMBNAIL_PX)


def _scan_png(request: AuthedHttpRequest, scan_uuid: UUID, *, max_side: int) -> HttpResponseBase:
    scan = scan_open(acting_user=request.user, scan_uuid=scan_uuid, client_address=client_address(request))
    if scan.kind == Scan.Kind.SLIDE:
        # Never the whole file into memory, and never the label or macro image.
        from diagnostics.views.slides import slide_thumbnail_png

        png = slide_thumbnail_png(scan, max_side=max_side)
    else:
        rendered = imaging.to_rgb_image(storage.read_bytes(scan.storage_name), max_side=max_side)
        out = io.BytesIO()
        rendered.save(out, format="PNG")
        png = out.getvalue()
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


@require_POST
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_upload_file(request: AuthedHttpRequest, case_uuid: UUID) -> JsonResponse:
    """The upload page's endpoint: one request per file (so the browser can show each
    file's progress), answered in JSON. The server's validation is the authority."""
    case = case_get(user=request.user, case_uuid=case_uuid)
    files = request.FILES.getlist("files")
    if len(files) != 1:
        return JsonResponse(
            {"errors": [{"file": "", "code": "one_file", "message": "send exactly one file in the field 'files'"}]},
            status=400,
        )
    try:
        result = scans_upload(
            acting_user=request.user,
            case=case,
            files=incoming_files(files),
            client_address=client_address(request),
        )
    except UploadBatchRejected as exc:
        errors = [{"file": name, "code": err.code, "message": err.message} for name, err in exc.errors]
        return JsonResponse({"errors": errors}, status=400)
    return JsonResponse(
        {
            "created": [{"uuid": str(s.uuid), "name": s.original_name} for s in result.created],
            "repeated": [{"uuid": str(s.uuid), "name": s.original_name} for s in result.repeated],
        },
        status=201 if result.created else 200,
    )
