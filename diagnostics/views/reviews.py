"""Pages for physicians: the review queue, the review screen with its viewer, blinded
reads, review settings, heat maps."""

from __future__ import annotations

import base64
import functools
import io
from typing import Any
from uuid import UUID

import numpy as np
from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from PIL import Image

from accounts.http import AuthedHttpRequest
from accounts.roles import REVIEW_PERMISSION
from accounts.services import user_units
from core.http import client_address, not_modified, worklist_queries
from core.pagination import BoundedPaginator
from diagnostics.forms import (
    BlindedReadForm,
    CorrectionForm,
    QueueFilterForm,
    ReviewerPreferenceForm,
    SignForm,
)
from diagnostics.intake import storage
from diagnostics.ml.heatmap import colorize
from diagnostics.models import ReviewDecision
from diagnostics.selectors.model_registry import stage_labels_known
from diagnostics.selectors.reviews import (
    blinded_read_get,
    decisions_with_signatures,
    heatmap_get,
    ood_reason_texts,
    review_item_decisions,
    review_item_get,
    review_queue,
    review_queue_filtered,
    review_queue_neighbours,
    reviewer_blinded_first,
)
from diagnostics.selectors.worklists import worklist_etag
from diagnostics.services.reviews import (
    ReviewRuleError,
    SignatureError,
    SigningLocked,
    blinded_read_record,
    review_item_open,
    review_sign,
    reviewer_preference_set,
    second_factor_required,
)


@require_GET
@login_required
def review_heatmap(request: AuthedHttpRequest, item_uuid: UUID) -> HttpResponseBase:
    """The Grad-CAM overlay (RGBA PNG) of a review item, only for its reviewers."""
    name = heatmap_get(user=request.user, item_uuid=item_uuid)
    response = HttpResponse(storage.read_bytes(name), content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@never_cache
@login_required
def review_queue_page(request: AuthedHttpRequest) -> HttpResponse:
    etag = None
    if request.GET.get("fragment"):  # the 2 s poll: nothing changed in the units, nothing to run
        if not request.user.has_perm(REVIEW_PERMISSION):  # the wrong role gets 403, never a 304
            raise PermissionDenied("the review queue is for physicians")
        # The rows also depend on the reader's blinded-first setting.
        query = f"{request.GET.urlencode()}&blinded={reviewer_blinded_first(user=request.user)}"
        etag = worklist_etag(user=request.user, kind="queue", query=query)
        if (unchanged := not_modified(request, etag)) is not None:
            return unchanged
    form = QueueFilterForm(request.GET, stages=stage_labels_known(), units=user_units(user=request.user))
    if not form.is_valid():
        review_queue(user=request.user)  # the wrong role gets 403 before any message
        refused = {"filter_form": form, "page": None, "blinded_first": reviewer_blinded_first(user=request.user)}
        return render(request, "diagnostics/review_queue.html", refused, status=400)
    data = form.cleaned_data
    items = review_queue_filtered(user=request.user, filters=form.worklist_filter())
    page = BoundedPaginator(items, 25, page_hint=data["page"] or 1).get_page(data["page"] or 1)
    template = "diagnostics/_review_rows.html" if request.GET.get("fragment") else "diagnostics/review_queue.html"
    context = {"page": page, "filter_form": form, "blinded_first": reviewer_blinded_first(user=request.user)}
    response = render(request, template, {**context, **worklist_queries(request)})
    if etag:
        response["ETag"] = etag
    return response


@require_http_methods(["GET", "POST"])
@login_required
def review_detail(request: AuthedHttpRequest, item_uuid: UUID) -> HttpResponse:
    if request.method == "GET":
        item = review_item_open(acting_user=request.user, item_uuid=item_uuid, client_address=client_address(request))
    else:
        item = review_item_get(user=request.user, item_uuid=item_uuid)
    labels = list(item.prediction.labels)
    decisions = review_item_decisions(item=item)
    current = decisions[-1] if decisions else None
    otp_required = second_factor_required(user=request.user, signing_session=request.session)
    withheld = bool(item.ai_withheld)  # type: ignore[attr-defined]  # annotated by the selector
    sign_form = (
        SignForm(request.POST or None, labels=labels, otp_required=otp_required, suggestion=not withheld)
        if current is None
        else None
    )
    correct_form = (
        CorrectionForm(request.POST or None, labels=labels, otp_required=otp_required) if current is not None else None
    )
    blinded = bool(item.ai_hidden)  # type: ignore[attr-defined]  # annotated by the selector
    status = 200
    if request.method == "POST":
        form = sign_form or correct_form
        assert form is not None
        if form.is_valid():
            data = form.cleaned_data
            try:
                review_sign(
                    acting_user=request.user,
                    review_item=item,
                    outcome=data.get("outcome", ReviewDecision.Outcome.REJECTED),
                    stage=data.get("stage") or "",
                    reason=data.get("reason") or "",
                    password=data["password"],
                    supersedes=current,
                    client_address=client_address(request),
                    otp_token=data.get("otp_token") or "",
                    signing_session=request.session,
                )
            except SigningLocked as exc:
                # The rule is the service's; the page ends the session it locked.
                logout(request)
                messages.error(request, exc.message[:1].upper() + exc.message[1:] + ".")
                return redirect_to_login(request.get_full_path())
            except SignatureError as exc:
                form.add_error("otp_token" if exc.code == "second_factor_failed" else "password", exc.message)
            except ReviewRuleError as exc:
                messages.error(request, exc.message[:1].upper() + exc.message[1:] + ".")
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, "Decision signed.")
                next_item = review_queue(user=request.user).first()
                if next_item is not None and current is None:
                    return redirect("review_detail", item_uuid=next_item.uuid)
                return redirect("review_queue")
        status = 400
    context = {
        "item": item,
        "prediction": item.prediction,
        "case": item.prediction.scan.case,
        "decisions": decisions_with_signatures(decisions),
        "current": current,
        "sign_form": sign_form,
        "correct_form": correct_form,
        **_review_viewer_context(request, item, labels, blinded, blinded_read_get(user=request.user, item=item)),
    }
    return render(request, "diagnostics/review_detail.html", context, status=status)


@functools.cache
def heat_legend_uri() -> str:
    """The heat map's colour scale as a small PNG (a data: address), drawn by the same
    function that colours the maps, so the legend cannot drift from the overlay."""
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None, :].repeat(12, axis=0)
    rgba = colorize(ramp)
    rgba[..., 3] = 255  # the overlay's alpha also rises with the value; the legend shows the colour
    out = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _heatmap_url(prediction: Any) -> str | None:
    # The viewer's heat-map layer exists only when the worker stored a Grad-CAM map.
    if prediction.heatmap_storage_name:
        return reverse("review_heatmap", kwargs={"item_uuid": prediction.review_item.uuid})
    return None


def _review_viewer_context(
    request: AuthedHttpRequest, item: Any, labels: list[str], blinded: bool, blinded_read: Any
) -> dict[str, Any]:
    previous_item, next_item = review_queue_neighbours(user=request.user, item=item)
    prediction = item.prediction
    withheld = bool(getattr(item, "ai_withheld", False))
    return {
        "blinded": blinded,
        "withheld": withheld,
        "ood_reasons": ood_reason_texts(prediction),
        "blinded_read": blinded_read,
        "blinded_form": BlindedReadForm(labels=labels) if blinded else None,
        "previous_item": previous_item,
        "next_item": next_item,
        "heatmap_url": None if blinded or withheld else _heatmap_url(prediction),
        "heat_legend": heat_legend_uri(),
        "case_image_count": prediction.scan.case.scans.count(),
        "stage_numbers": [(i + 1, label) for i, label in enumerate(labels)],
        "predicted_number": prediction.predicted_index + 1,
        "slide": _slide_context(item, prediction, blinded or withheld),
    }


def _slide_context(item: Any, prediction: Any, hide_answer: bool) -> dict[str, Any] | None:
    """The slide viewer's data: Deep Zoom tiles, the overlay's extent, the gallery of
    regions (none while the AI's answer is hidden or withheld)."""
    scan = prediction.scan
    if scan.kind != "slide":
        return None
    summary = prediction.slide_summary or {}
    cols, rows = (summary.get("grid") or [0, 0])[:2]
    tile_px = float(summary.get("tile_px") or 0)
    regions = (
        []
        if hide_answer
        else [
            {**r, "image_url": reverse("slide_region", kwargs={"item_uuid": item.uuid, "rank": r["rank"]})}
            for r in prediction.regions
        ]
    )
    return {
        "dzi_url": reverse("slide_dzi", kwargs={"scan_uuid": scan.uuid}),
        "mpp": scan.mpp_x,
        # The overlay covers the tile grid (whole tiles from the top-left corner), as a
        # fraction of the slide's width: OpenSeadragon's viewport unit.
        "overlay_width": cols * tile_px / scan.width if scan.width else 1,
        "overlay_height": rows * tile_px / scan.width if scan.width else 1,
        "regions": regions,
        "summary": summary,
    }


@require_POST
@login_required
@permission_required(REVIEW_PERMISSION, raise_exception=True)
def review_blinded(request: AuthedHttpRequest, item_uuid: UUID) -> HttpResponse:
    item = review_item_get(user=request.user, item_uuid=item_uuid)
    form = BlindedReadForm(request.POST, labels=list(item.prediction.labels))
    if form.is_valid():
        try:
            blinded_read_record(
                acting_user=request.user,
                review_item=item,
                stage=form.cleaned_data["stage"],
                client_address=client_address(request),
            )
        except ReviewRuleError as exc:
            return HttpResponse(exc.message, status=400, content_type="text/plain")
        except ValidationError as exc:
            return HttpResponse("; ".join(exc.messages), status=400, content_type="text/plain")
        messages.success(request, "Your stage is recorded. The AI's answer is shown below.")
        return redirect("review_detail", item_uuid=item.uuid)
    errors = "; ".join(f"{k}: {' '.join(str(m) for m in v)}" for k, v in form.errors.items())
    return HttpResponse(f"Not recorded. {errors}", status=400, content_type="text/plain")


@require_http_methods(["GET", "POST"])
@login_required
@permission_required(REVIEW_PERMISSION, raise_exception=True)
def review_settings(request: AuthedHttpRequest) -> HttpResponse:
    initial = {"blinded_first": reviewer_blinded_first(user=request.user)}
    form = ReviewerPreferenceForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        reviewer_preference_set(
            acting_user=request.user,
            blinded_first=form.cleaned_data["blinded_first"],
            client_address=client_address(request),
        )
        messages.success(request, "Review settings saved.")
        return redirect("review_settings")
    return render(request, "diagnostics/review_settings.html", {"form": form})
