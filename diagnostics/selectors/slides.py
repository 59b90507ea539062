"""Reads of whole-slide images, their uploads and their results, scoped to the user:
a slide through the cases the user may see (as every scan), an upload for its uploader
alone, the AI's slide result for the case's physicians."""

from __future__ import annotations

from uuid import UUID

from django.core.exceptions import PermissionDenied

from accounts.models import User
from core.exceptions import NotFound
from diagnostics.models import Prediction, ReviewItem, Scan, SlideUpload
from diagnostics.selectors.cases import cases_for_user, scan_get
from diagnostics.selectors.reviews import review_item_get


def slide_get(*, user: User, scan_uuid: UUID) -> Scan:
    """A stored slide the user may see; anything else (another unit's, an image) is 404."""
    scan = scan_get(user=user, scan_uuid=scan_uuid)
    if scan.kind != Scan.Kind.SLIDE:
        raise NotFound("no such slide")
    return scan


def slide_upload_get(*, user: User, upload_uuid: UUID) -> SlideUpload:
    """An upload is its uploader's until it becomes a scan: nobody else sees it, not even
    members of the same unit (an interrupted upload leaves nothing visible)."""
    try:
        return SlideUpload.objects.select_related("case", "scan").get(
            uuid=upload_uuid, uploaded_by=user, case__in=cases_for_user(user=user)
        )
    except SlideUpload.DoesNotExist as exc:
        raise NotFound("no such upload") from exc


def slide_prediction_get(*, user: User, item_uuid: UUID) -> tuple[ReviewItem, Prediction]:
    """A slide review item and its prediction (the AI's answer: the map and the regions),
    for the physicians who may review it, once blinded-first allows them to see it, and
    never for a slide outside what the model was trained on (its answer is withheld)."""
    item = review_item_get(user=user, item_uuid=item_uuid)
    if item.prediction.scan.kind != Scan.Kind.SLIDE:
        raise NotFound("this review item is not a slide")
    if item.ai_hidden:  # type: ignore[attr-defined]  # annotated by review_item_get
        raise PermissionDenied("record your own stage first; the AI's map and regions are shown after that")
    if item.ai_withheld:  # type: ignore[attr-defined]  # annotated by review_item_get
        raise NotFound("this slide is outside what the model was trained on: it has no map or regions to show")
    return item, item.prediction


def slide_region_get(*, user: User, item_uuid: UUID, rank: int) -> tuple[Scan, dict[str, int]]:
    item, prediction = slide_prediction_get(user=user, item_uuid=item_uuid)
    region = next((r for r in prediction.regions if r.get("rank") == rank), None)
    if region is None:
        raise NotFound("no such region")
    return prediction.scan, region
