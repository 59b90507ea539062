"""Pages for whole-slide images: the Deep Zoom descriptor and tiles of a slide (the same
access rule as every scan: outside the user's care units it is 404), its thumbnail, the
region pictures of the review gallery. Label and macro images have no route at all."""

from __future__ import annotations

import io
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.views.decorators.http import require_GET
from PIL import Image

from accounts.audit import record_view
from accounts.http import AuthedHttpRequest
from core.http import client_address
from diagnostics import slide_tiles
from diagnostics.models import Scan
from diagnostics.selectors.slides import slide_get, slide_region_get

# Tiles of a stored slide never change (it is stored under its SHA-256): the browser
# may keep them for the session's working day, privately.
TILE_CACHE = "private, max-age=43200, immutable"
REGION_PX = 256


def _jpeg(image: Image.Image, quality: int = 80) -> bytes:

    if image.mode == "RGBA":  # OpenSlide's transparent areas (no data) shown as glass, not black
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


@require_GET
@login_required
def slide_dzi(request: AuthedHttpRequest, scan_uuid: UUID) -> HttpResponse:
    """The Deep Zoom descriptor; opening it is the audited opening of the slide."""
    scan = slide_get(user=request.user, scan_uuid=scan_uuid)
    record_view(actor=request.user, obj=scan, client_address=client_address(request))
    dzi = slide_tiles.open_slide(scan).deepzoom.get_dzi("jpeg")
    response = HttpResponse(dzi, content_type="application/xml")
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@login_required
def slide_tile(request: AuthedHttpRequest, scan_uuid: UUID, level: int, col: int, row: int) -> HttpResponse:
    scan = slide_get(user=request.user, scan_uuid=scan_uuid)
    deepzoom = slide_tiles.open_slide(scan).deepzoom
    try:
        tile = deepzoom.get_tile(level, (col, row))
    except ValueError as exc:  # outside the pyramid
        raise Http404("no such tile") from exc
    response = HttpResponse(_jpeg(tile), content_type="image/jpeg")
    response["Cache-Control"] = TILE_CACHE
    return response


def slide_thumbnail_png(scan: Scan, max_side: int = 1024) -> bytes:
    """The whole slide small (its lowest levels only: never the label or macro)."""
    handle = slide_tiles.open_slide(scan)
    out = io.BytesIO()
    handle.slide.get_thumbnail((max_side, max_side)).convert("RGB").save(out, format="PNG")
    return out.getvalue()


@require_GET
@login_required
def slide_region(request: AuthedHttpRequest, item_uuid: UUID, rank: int) -> HttpResponse:
    """A picture of one of the top-k regions, for the review gallery (the AI's answer:
    physicians of the case only, and not before a blinded-first read is recorded)."""
    scan, region = slide_region_get(user=request.user, item_uuid=item_uuid, rank=rank)
    handle = slide_tiles.open_slide(scan)
    slide = handle.slide
    side = max(region["width"], region["height"])
    pad = side // 4
    x, y, w, h = region["x"] - pad, region["y"] - pad, region["width"] + 2 * pad, region["height"] + 2 * pad
    level = slide.get_best_level_for_downsample(max(w, h) / REGION_PX)
    ds = slide.level_downsamples[level]
    picture = slide.read_region((max(0, x), max(0, y)), level, (max(1, int(w / ds)), max(1, int(h / ds))))
    picture.thumbnail((REGION_PX, REGION_PX))
    response = HttpResponse(_jpeg(picture, 85), content_type="image/jpeg")
    response["Cache-Control"] = "private, no-store"
    return response
