"""Pages. Thin: a form or selector in, a service call, a template out."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.otp import confirmed_device
from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION
from accounts.services import user_units
from diagnostics import charts_svg, imaging, selectors, services, storage
from diagnostics.forms import (
    BlindedReadForm,
    CaseCreateForm,
    CaseFilterForm,
    CorrectionForm,
    QueueFilterForm,
    ReviewerPreferenceForm,
    ScanUploadForm,
    SignForm,
)
from diagnostics.models import ReviewDecision
from diagnostics.validation import accepted_extensions

# Set after the session's first signing with the authenticator code (see services.review_sign).
SESSION_OTP_SIGNED = "cw_otp_signed"


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
    form = CaseFilterForm(request.GET, stages=selectors.stage_labels_known(), units=user_units(user=request.user))
    if not form.is_valid():
        return render(request, "diagnostics/case_list.html", {"filter_form": form, "rows": []}, status=400)
    data = form.cleaned_data
    cases = selectors.cases_filtered(
        user=request.user,
        status=data["status"],
        stage=data["stage"],
        date_from=data["date_from"],
        date_to=data["date_to"],
        search=data["q"],
        unit=data.get("unit") or "",
    ).prefetch_related("scans__job")
    page = Paginator(cases, 25).get_page(data["page"] or 1)
    rows = []
    for case in page:
        statuses = [status for _, status in selectors.case_scans_with_status(case=case)]
        rows.append((case, selectors.case_status_summary(statuses), len(statuses)))
    context = {"page": page, "rows": rows, "filter_form": form, **_worklist_queries(request)}
    template = "diagnostics/_case_rows.html" if request.GET.get("fragment") else "diagnostics/case_list.html"
    return render(request, template, context)


def _worklist_queries(request: HttpRequest) -> dict[str, str]:
    """The current filters as query strings: for the pager's links and the live poll."""
    query = request.GET.copy()
    query.pop("fragment", None)
    query.pop("page", None)
    filters = query.urlencode()
    poll = request.GET.copy()
    poll["fragment"] = "1"
    return {"filter_query": filters, "poll_query": poll.urlencode()}


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_new(request: HttpRequest) -> HttpResponse:
    form = CaseCreateForm(
        request.POST or None, request.FILES or None, units=user_units(user=request.user), tasks=selectors.active_tasks()
    )
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                case = services.case_create(
                    acting_user=request.user,
                    patient_ref=form.cleaned_data["patient_ref"],
                    body_site=form.cleaned_data["body_site"],
                    note=form.cleaned_data["note"],
                    task=form.cleaned_data["task"],
                    files=_incoming(form.cleaned_data["files"]),
                    client_address=_client_address(request),
                    unit=form.cleaned_data.get("unit"),
                )
            except services.UploadBatchRejected as exc:
                _add_upload_errors(form, exc)
            except ValidationError as exc:
                form.add_error(None, exc.messages)
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
    services.record_view(acting_user=request.user, obj=case, client_address=_client_address(request))
    return render(request, "diagnostics/case_detail.html", _case_context(case, ScanUploadForm()))


def _case_context(case: Any, form: ScanUploadForm) -> dict[str, Any]:
    scans = selectors.case_scans_with_status(case=case)
    return {
        "case": case,
        "scans": scans,
        "summary": selectors.case_status_summary([s for _, s in scans]),
        "all_done": all(s.code in ("signed", "failed") for _, s in scans),
        "form": form,
        # The upload page's client-side pre-checks; the server stays the authority.
        "upload_max_bytes": settings.UPLOAD_MAX_BYTES,
        "upload_max_files": settings.UPLOAD_MAX_FILES,
        "upload_extensions": ",".join(accepted_extensions()),
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
    job = selectors.job_get(user=request.user, job_uuid=job_uuid)
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
    """A PNG rendering of the scan (browsers cannot show TIFF or DICOM), at most 1024 px."""
    scan = selectors.scan_get_for_image(user=request.user, scan_uuid=scan_uuid)
    services.record_view(acting_user=request.user, obj=scan, client_address=_client_address(request))
    data = storage.read_bytes(scan.storage_name)
    rendered = imaging.to_rgb_image(data, max_side=1024)
    out = io.BytesIO()
    rendered.save(out, format="PNG")
    response = HttpResponse(out.getvalue(), content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@login_required
def review_heatmap(request: HttpRequest, item_uuid: UUID) -> HttpResponseBase:
    """The Grad-CAM overlay (RGBA PNG) of a review item, only for its reviewers."""
    name = selectors.heatmap_get(user=request.user, item_uuid=item_uuid)
    response = HttpResponse(storage.read_bytes(name), content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@never_cache
@login_required
def review_queue(request: HttpRequest) -> HttpResponse:
    form = QueueFilterForm(request.GET, stages=selectors.stage_labels_known(), units=user_units(user=request.user))
    if not form.is_valid():
        selectors.review_queue(user=request.user)  # the wrong role gets 403 before any message
        return render(request, "diagnostics/review_queue.html", {"filter_form": form, "page": None}, status=400)
    data = form.cleaned_data
    items = selectors.review_queue_filtered(
        user=request.user,
        stage=data["stage"],
        date_from=data["date_from"],
        date_to=data["date_to"],
        search=data["q"],
        unit=data.get("unit") or "",
    )
    page = Paginator(items, 25).get_page(data["page"] or 1)
    template = "diagnostics/_review_rows.html" if request.GET.get("fragment") else "diagnostics/review_queue.html"
    return render(request, template, {"page": page, "filter_form": form, **_worklist_queries(request)})


@require_http_methods(["GET", "POST"])
@login_required
def review_detail(request: HttpRequest, item_uuid: UUID) -> HttpResponse:
    item = selectors.review_item_get(user=request.user, item_uuid=item_uuid)
    labels = list(item.prediction.labels)
    decisions = list(item.decisions.select_related("supersedes").order_by("signed_at", "id"))
    current = decisions[-1] if decisions else None
    otp_required = confirmed_device(request.user) is not None and not request.session.get(SESSION_OTP_SIGNED)
    sign_form = SignForm(request.POST or None, labels=labels, otp_required=otp_required) if current is None else None
    correct_form = (
        CorrectionForm(request.POST or None, labels=labels, otp_required=otp_required) if current is not None else None
    )
    blinded_read = selectors.blinded_read_get(user=request.user, item=item)
    # Blinded-first: the AI's answer stays hidden, and signing is refused, until the
    # physician has recorded a stage of their own.
    blinded = current is None and blinded_read is None and selectors.reviewer_blinded_first(user=request.user)
    status = 200
    if request.method == "GET":
        services.record_view(acting_user=request.user, obj=item, client_address=_client_address(request))
    if request.method == "POST" and blinded:
        messages.error(request, "Record your own stage first; the AI's answer is shown after that.")
        status = 400
    elif request.method == "POST":
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
                    otp_token=data.get("otp_token") or "",
                    otp_signed_in_session=not otp_required,
                )
            except services.SignatureError as exc:
                form.add_error("otp_token" if exc.code == "second_factor_failed" else "password", exc.message)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                if otp_required:
                    request.session[SESSION_OTP_SIGNED] = True
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
        **_review_viewer_context(request, item, labels, blinded, blinded_read),
    }
    return render(request, "diagnostics/review_detail.html", context, status=status)


# --- issue 6: upload with progress, viewer, blinded reads, notifications, dashboards ---


@require_POST
@login_required
@permission_required(UPLOAD_PERMISSION, raise_exception=True)
def case_upload_file(request: HttpRequest, case_uuid: UUID) -> JsonResponse:
    """The upload page's endpoint: one request per file (so the browser can show each
    file's progress), answered in JSON. The server's validation is the authority."""
    case = selectors.case_get(user=request.user, case_uuid=case_uuid)
    files = request.FILES.getlist("files")
    if len(files) != 1:
        return JsonResponse(
            {"errors": [{"file": "", "code": "one_file", "message": "send exactly one file in the field 'files'"}]},
            status=400,
        )
    try:
        result = services.scans_upload(
            acting_user=request.user,
            case=case,
            files=_incoming(files),
            client_address=_client_address(request),
        )
    except services.UploadBatchRejected as exc:
        errors = [{"file": name, "code": err.code, "message": err.message} for name, err in exc.errors]
        return JsonResponse({"errors": errors}, status=400)
    return JsonResponse(
        {
            "created": [{"uuid": str(s.uuid), "name": s.original_name} for s in result.created],
            "repeated": [{"uuid": str(s.uuid), "name": s.original_name} for s in result.repeated],
        },
        status=201 if result.created else 200,
    )


def _heatmap_url(prediction: Any) -> str | None:
    # The viewer's heat-map layer exists only when the worker stored a Grad-CAM map.
    if prediction.heatmap_storage_name:
        return reverse("review_heatmap", kwargs={"item_uuid": prediction.review_item.uuid})
    return None


def _review_viewer_context(
    request: HttpRequest, item: Any, labels: list[str], blinded: bool, blinded_read: Any
) -> dict[str, Any]:
    previous_item, next_item = selectors.review_queue_neighbours(user=request.user, item=item)
    prediction = item.prediction
    return {
        "blinded": blinded,
        "blinded_read": blinded_read,
        "blinded_form": BlindedReadForm(labels=labels) if blinded else None,
        "previous_item": previous_item,
        "next_item": next_item,
        "heatmap_url": None if blinded else _heatmap_url(prediction),
        "stage_numbers": [(i + 1, label) for i, label in enumerate(labels)],
        "predicted_number": prediction.predicted_index + 1,
    }


@require_POST
@login_required
@permission_required(REVIEW_PERMISSION, raise_exception=True)
def review_blinded(request: HttpRequest, item_uuid: UUID) -> HttpResponse:
    item = selectors.review_item_get(user=request.user, item_uuid=item_uuid)
    form = BlindedReadForm(request.POST, labels=list(item.prediction.labels))
    if form.is_valid():
        try:
            services.blinded_read_record(
                acting_user=request.user,
                review_item=item,
                stage=form.cleaned_data["stage"],
                client_address=_client_address(request),
            )
        except ValidationError as exc:
            return HttpResponse("; ".join(exc.messages), status=400, content_type="text/plain")
        messages.success(request, "Your stage is recorded. The AI's answer is shown below.")
        return redirect("review_detail", item_uuid=item.uuid)
    errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
    return HttpResponse(f"Not recorded. {errors}", status=400, content_type="text/plain")


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(REVIEW_PERMISSION, raise_exception=True)
def review_settings(request: HttpRequest) -> HttpResponse:
    initial = {"blinded_first": selectors.reviewer_blinded_first(user=request.user)}
    form = ReviewerPreferenceForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        services.reviewer_preference_set(
            acting_user=request.user,
            blinded_first=form.cleaned_data["blinded_first"],
            client_address=_client_address(request),
        )
        messages.success(request, "Review settings saved.")
        return redirect("review_settings")
    return render(request, "diagnostics/review_settings.html", {"form": form})


@require_GET
@login_required
def model_card(request: HttpRequest, model_uuid: UUID) -> HttpResponse:
    """The bundle's MODEL_CARD.md as a page. Rendered without raw HTML: the card is
    text from a model bundle, not markup we trust."""
    from markdown_it import MarkdownIt

    model_version = selectors.model_version_get(user=request.user, model_uuid=model_uuid)
    bundle = Path(model_version.bundle_path)
    if not bundle.is_absolute():
        bundle = Path(settings.BASE_DIR) / bundle
    card_path = bundle / "MODEL_CARD.md"
    card_html = MarkdownIt("js-default").render(card_path.read_text()) if card_path.is_file() else ""
    return render(request, "diagnostics/model_card.html", {"model_version": model_version, "card_html": card_html})


@require_GET
@never_cache
@login_required
def notification_list(request: HttpRequest) -> HttpResponse:
    notes = selectors.notifications_for_user(user=request.user)
    page = Paginator(notes, 25).get_page(request.GET.get("page"))
    return render(request, "diagnostics/notifications.html", {"page": page})


@require_POST
@login_required
def notification_read(request: HttpRequest) -> HttpResponse:
    raw = request.POST.get("notification", "")
    target: UUID | None = None
    if raw:
        try:
            target = UUID(raw)
        except ValueError:
            return HttpResponse("notification must be a UUID", status=400, content_type="text/plain")
    services.notifications_mark_read(acting_user=request.user, notification_uuid=target)
    return redirect("notification_list")


@require_GET
@never_cache
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    agreements = selectors.agreement_by_model(user=request.user)
    stats = selectors.queue_stats(user=request.user)
    charts = [(a, charts_svg.confusion_svg(a), charts_svg.trend_svg(a)) for a in agreements]
    return render(request, "diagnostics/dashboard.html", {"charts": charts, "stats": stats})


@require_GET
@never_cache
@login_required
def dashboard_csv(request: HttpRequest) -> HttpResponse:
    agreements = selectors.agreement_by_model(user=request.user)
    stats = selectors.queue_stats(user=request.user)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="cancerweb-agreement.csv"'
    writer = csv.writer(response)
    writer.writerow(["section", "model", "stage", "predicted_stage", "metric", "value"])
    for a in agreements:
        model = str(a.model_version)
        writer.writerow(["overall", model, "", "", "n", a.n])
        writer.writerow(["overall", model, "", "", "accuracy", f"{a.accuracy:.6f}"])
        for st in a.stages:
            for metric in ("precision", "recall", "f1"):
                writer.writerow(["per_stage", model, st.label, "", metric, f"{getattr(st, metric):.6f}"])
            writer.writerow(["per_stage", model, st.label, "", "support", st.support])
        for i, row in enumerate(a.confusion):
            for j, count in enumerate(row):
                writer.writerow(["confusion", model, a.labels[i], a.labels[j], "count", count])
        for day, n, acc in a.trend:
            writer.writerow(["trend", model, "", "", f"accuracy {day.isoformat()} (n={n})", f"{acc:.6f}"])
    for metric in ("pending", "oldest_minutes", "median_age_minutes", "signed", "median_signoff_minutes"):
        value = getattr(stats, metric)
        writer.writerow(["queue", "", "", "", metric, "" if value is None else f"{value:.2f}"])
    return response
