"""Reader-study pages: the list, defining a study, the owner's statistics (with the
confusion matrices as server-drawn SVG and a CSV export) and the reader's blinded
worklist."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthedHttpRequest
from accounts.models import User
from accounts.roles import REVIEW_PERMISSION, STUDY_PERMISSION
from core.exports import csv_writer
from core.http import client_address
from diagnostics.forms import ReaderStudyForm, StudyStageForm
from diagnostics.ml.agreement import Estimate
from diagnostics.models import ReaderStudy
from diagnostics.selectors.reader_studies import (
    StudyResults,
    reader_name,
    reader_studies_owned,
    reader_studies_to_read,
    reader_study_ai,
    reader_study_owned_get,
    reader_study_reads,
    reader_study_references,
    reader_study_results,
    reader_study_to_read_get,
    reader_worklist,
)
from diagnostics.services.reader_studies import (
    ReaderStudyError,
    reader_study_create,
    reader_study_export_recorded,
    reader_study_opened,
    reader_study_read_record,
    reader_study_reference_set,
    recent_unit_scans,
)
from diagnostics.views.charts import matrix_svg


def _require_owner_role(user: User) -> None:
    if not user.has_perm(STUDY_PERMISSION):
        raise PermissionDenied("only admins and lead physicians see reader studies' statistics")


def _require_reader_role(user: User) -> None:
    if not user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("only physicians read in reader studies")


def _physicians() -> Any:
    return (
        User.objects.filter(is_active=True, groups__permissions__codename="review_prediction")
        .distinct()
        .order_by("last_name", "username")
    )


@require_GET
@never_cache
@login_required
def study_list(request: AuthedHttpRequest) -> HttpResponse:
    user = request.user
    if not user.has_perm(STUDY_PERMISSION) and not user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("reader studies are for physicians, lead physicians and admins")
    return render(
        request,
        "diagnostics/study_list.html",
        {
            "owned": reader_studies_owned(user=user),
            "to_read": reader_studies_to_read(user=user),
            "can_define": user.has_perm(STUDY_PERMISSION),
        },
    )


@require_http_methods(["GET", "POST"])
@never_cache
@login_required
def study_new(request: AuthedHttpRequest) -> HttpResponse:
    _require_owner_role(request.user)
    form = ReaderStudyForm(request.POST or None, physicians=_physicians(), arms=list(ReaderStudy.Arm.choices))
    if request.method == "POST" and form.is_valid():
        try:
            scans = form.cleaned_data["scans"]
            if not scans:
                scans = recent_unit_scans(unit=form.cleaned_data["unit"], count=form.cleaned_data["count"])
            study = reader_study_create(
                acting_user=request.user,
                name=form.cleaned_data["name"],
                arm=form.cleaned_data["arm"],
                readers=list(form.cleaned_data["readers"]),
                scan_uuids=scans,
                client_address=client_address(request),
            )
        except ReaderStudyError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Study {study.name} defined with {study.scans.count()} scans.")
            return redirect("study_detail", study_uuid=study.uuid)
    status = 400 if request.method == "POST" else 200
    return render(request, "diagnostics/study_new.html", {"form": form}, status=status)


def _label(results: StudyResults, rater: int | None) -> str:
    return "AI" if rater is None else reader_name(results.readers[rater])


def _results_context(results: StudyResults) -> dict[str, Any]:
    stats, labels = results.stats, results.labels
    pairs = []
    for n, p in enumerate(stats.pairs):
        first, second = _label(results, p.first), _label(results, p.second)
        svg = matrix_svg(
            ident=f"pair-{n}",
            title=f"Confusion of {first} (rows) and {second} (columns) on {p.kappa.n} scans",
            labels=labels,
            matrix=p.confusion,
            rows=first,
            columns=second,
        )
        pairs.append({"first": first, "second": second, "kappa": p.kappa, "weighted": p.weighted_kappa, "svg": svg})
    reference_name = "adjudicated reference" if stats.reference_kind == "adjudicated" else "readers' majority"
    versus = []
    for n, v in enumerate(stats.versus_reference):
        who = _label(results, v.rater)
        svg = matrix_svg(
            ident=f"ref-{n}",
            title=f"Confusion of the {reference_name} (rows) and {who} (columns) on {v.agreement.n} scans",
            labels=labels,
            matrix=v.confusion,
            rows=reference_name.capitalize(),
            columns=who,
        )
        versus.append({"who": who, "is_ai": v.rater is None, "agreement": v.agreement, "kappa": v.kappa, "svg": svg})
    return {
        "results": results,
        "pairs": pairs,
        "versus": versus,
        "reference_name": reference_name,
        "progress": [(reader_name(r), results.reads_done.get(r.pk, 0)) for r in results.readers],
    }


@require_GET
@never_cache
@login_required
def study_detail(request: AuthedHttpRequest, study_uuid: UUID) -> HttpResponse:
    _require_owner_role(request.user)
    study = reader_study_owned_get(user=request.user, study_uuid=study_uuid)
    reader_study_opened(acting_user=request.user, study=study, client_address=client_address(request))
    results = reader_study_results(study=study)
    references = reader_study_references(study=study)
    scans = [(scan, references.get(scan.pk, "")) for scan in results.scans]
    context = _results_context(results) | {"study": study, "scans": scans, "labels": study.labels}
    return render(request, "diagnostics/study_detail.html", context)


@require_POST
@login_required
def study_reference(request: AuthedHttpRequest, study_uuid: UUID) -> HttpResponse:
    _require_owner_role(request.user)
    study = reader_study_owned_get(user=request.user, study_uuid=study_uuid)
    form = StudyStageForm(request.POST, labels=study.labels, required=False)
    if not form.is_valid():
        return HttpResponse("Choose a scan and one of the study's stages.", status=400, content_type="text/plain")
    try:
        reader_study_reference_set(
            acting_user=request.user,
            study=study,
            scan_uuid=form.cleaned_data["scan"],
            stage=form.cleaned_data["stage"],
            client_address=client_address(request),
        )
    except ReaderStudyError as exc:
        return HttpResponse(exc.message, status=400, content_type="text/plain")
    messages.success(request, "Reference stage saved.")
    return redirect("study_detail", study_uuid=study.uuid)


def _number(e: Estimate, attr: str) -> str:
    value = getattr(e, attr)
    return "" if value is None else f"{value:.6f}"


@require_GET
@never_cache
@login_required
def study_csv(request: AuthedHttpRequest, study_uuid: UUID) -> HttpResponse:
    _require_owner_role(request.user)
    study = reader_study_owned_get(user=request.user, study_uuid=study_uuid)
    results = reader_study_results(study=study)
    reader_study_export_recorded(acting_user=request.user, study=study, client_address=client_address(request))
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="reader-study-{study.uuid}.csv"'
    writer = csv_writer(response)

    def row(*cells: Any) -> None:
        writer.writerow(cells)

    row("section", "rater", "other", "statistic", "value", "ci_low", "ci_high", "n")
    stats = results.stats

    def estimate(section: str, rater: str, other: str, name: str, e: Estimate) -> None:
        row(section, rater, other, name, _number(e, "value"), _number(e, "low"), _number(e, "high"), e.n)

    row("study", study.name, "", "arm", study.arm, "", "", "")
    row("study", "", "", "reference", stats.reference_kind, "", "", "")
    estimate("fleiss", "all readers", "", "fleiss_kappa", stats.fleiss)
    for p in stats.pairs:
        a, b = _label(results, p.first), _label(results, p.second)
        estimate("pair", a, b, "cohen_kappa", p.kappa)
        estimate("pair", a, b, "quadratic_weighted_kappa", p.weighted_kappa)
    for v in stats.versus_reference:
        who = _label(results, v.rater)
        estimate("reference", who, stats.reference_kind, "agreement", v.agreement)
        estimate("reference", who, stats.reference_kind, "cohen_kappa", v.kappa)
        estimate("reference", who, stats.reference_kind, "quadratic_weighted_kappa", v.weighted_kappa)
    row("read", "reader", "scan", "stage", "recorded_at", "", "", "")
    for read in reader_study_reads(study=study):
        row("read", reader_name(read.reader), str(read.scan.uuid), read.stage, read.recorded_at.isoformat(), "", "", "")
    return response


@require_http_methods(["GET", "POST"])
@never_cache
@login_required
def study_read(request: AuthedHttpRequest, study_uuid: UUID) -> HttpResponse:
    """The reader's blinded worklist: one scan at a time (the first unread one, or the
    one asked for with ?n=), no case reference, no other reader's answer."""
    _require_reader_role(request.user)
    study = reader_study_to_read_get(user=request.user, study_uuid=study_uuid)
    status = 200
    if request.method == "POST":
        form = StudyStageForm(request.POST, labels=study.labels)
        if form.is_valid():
            try:
                reader_study_read_record(
                    acting_user=request.user,
                    study=study,
                    scan_uuid=form.cleaned_data["scan"],
                    stage=form.cleaned_data["stage"],
                    client_address=client_address(request),
                )
            except ReaderStudyError as exc:
                messages.error(request, exc.message)
                status = 400
            else:
                return redirect(reverse("study_read", args=[study.uuid]))
        else:
            messages.error(request, "Choose one of the study's stages.")
            status = 400
    entries = reader_worklist(user=request.user, study=study)
    current = None
    wanted = request.GET.get("n", "")
    if wanted.isdigit() and 1 <= int(wanted) <= len(entries):
        current = entries[int(wanted) - 1]
    else:
        current = next((e for e in entries if e.own_stage is None), None)
    ai = reader_study_ai(user=request.user, study=study, scan=current.scan) if current else None
    context = {
        "study": study,
        "entries": entries,
        "current": current,
        "ai": ai,
        "done": sum(1 for e in entries if e.own_stage is not None),
        "stage_numbers": list(enumerate(study.labels, start=1)),
        "heatmap_url": reverse("review_heatmap", args=[ai.heatmap_item]) if ai and ai.heatmap_item else None,
    }
    return render(request, "diagnostics/study_read.html", context, status=status)
