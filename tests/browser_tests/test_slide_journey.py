"""Whole slides in Chromium against the real app (live server, PostgreSQL, Redis, a real
Celery worker): the clinician uploads slide-01.tiff, the upload is interrupted halfway
by a page reload and resumed from where it stopped, the stored slide's SHA-256 equals
the original's; the clinician watches the tile progress; the physician opens the slide,
zooms, toggles the overlay, jumps through the top regions and signs. Every screen is
screenshotted (test-output/screenshots/) and checked with axe-core."""

from __future__ import annotations

import hashlib
import re
import time

import pytest

from diagnostics.models import ReviewDecision, Scan
from tests.browser_tests.journeys import login, screen
from tests.factories import make_case
from tests.helpers import PASSWORD, otp_code
from tests.slides_tests.slide_factory import SHARED_SLIDES

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.slides, pytest.mark.django_db(transaction=True)]

SLIDE = SHARED_SLIDES / "slide-01.tiff"


def test_a_slide_upload_survives_an_interruption_and_the_physician_signs_at_slide_level(
    live_server, browser, celery_worker_process, active_model, clinician, physician, settings
):  # type: ignore[no-untyped-def]
    # Small chunks, so "halfway" is ten requests in rather than inside one.
    settings.SLIDE_CHUNK_BYTES = 128 * 1024
    case = make_case(clinician, ref="PSN-WSI-1", n_files=0)
    original = hashlib.sha256(SLIDE.read_bytes()).hexdigest()
    size = SLIDE.stat().st_size

    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    login(page, live_server.url, "clinician", PASSWORD)
    page.goto(f"{live_server.url}/cases/{case.uuid}/")
    page.set_input_files("#slide-file", str(SLIDE))
    # Slow the requests a little so the page can be left halfway.
    page.route("**/api/v1/slide-uploads/**", lambda route: (time.sleep(0.15), route.continue_()))
    page.click("#slide-start")
    page.wait_for_function(f"+(document.getElementById('slide-progress').dataset.offset || 0) >= {size // 2}")
    screen(page, "40-clinician-slide-upload-halfway")
    page.unroute_all(behavior="ignoreErrors")
    page.reload()  # the interruption: every request in flight is dropped
    page.set_input_files("#slide-file", str(SLIDE))
    page.click("#slide-start")
    page.wait_for_selector("#slide-progress[data-resumed='1']")
    page.wait_for_selector("#slide-progress[data-state='done']", timeout=120_000)
    assert page.locator("#slide-progress").get_attribute("data-sha256") == original
    scan = Scan.objects.get(case=case)
    assert scan.sha256 == original and scan.received_sha256 == original and scan.size_bytes == size
    # The clinician watches the tiles being analysed, then "Awaiting review".
    page.wait_for_selector(".status-running .tile-count, .status-awaiting_review", timeout=120_000)
    screen(page, "41-clinician-slide-tile-progress")
    page.wait_for_selector(".status-awaiting_review", timeout=180_000)
    screen(page, "42-clinician-slide-awaiting-review")
    context.close()

    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    login(page, live_server.url, "physician", PASSWORD)
    page.goto(f"{live_server.url}/review/")
    page.click("main a[href*='/review/']:has-text('PSN-WSI-1')")
    page.wait_for_selector("#viewer[data-ready='1'][data-heatmap-loaded='1']")
    page.wait_for_function("document.getElementById('scale-text').textContent.match(/[0-9]+ (µm|mm)/)")
    screen(page, "43-physician-slide-overview")
    before = page.locator("#viewer").get_attribute("data-scale-um")
    page.click("#zoom-in")
    page.click("#zoom-in")
    page.wait_for_function(f"document.getElementById('viewer').dataset.scaleUm !== '{before}'")
    page.uncheck("#heatmap-toggle")
    assert page.locator("#viewer").get_attribute("data-heatmap-visible") == "0"
    screen(page, "44-physician-slide-zoomed-overlay-off")
    page.check("#heatmap-toggle")
    page.fill("#heatmap-opacity", "80")
    page.dispatch_event("#heatmap-opacity", "input")
    assert page.locator("#viewer").get_attribute("data-heatmap-visible") == "1"
    regions = page.locator(".region-gallery .region")
    assert regions.count() >= 1
    for i in range(min(3, regions.count())):
        regions.nth(i).click()
        page.wait_for_function(f"document.getElementById('viewer').dataset.region === '{i + 1}'")
    screen(page, "45-physician-slide-top-region")
    page.keyboard.press("]")
    assert page.locator("#viewer").get_attribute("data-region") is not None
    assert re.search(r"metastasis", page.locator(".predicted").inner_text())
    page.check("input[name=outcome][value=confirmed]")
    page.fill("#id_password", PASSWORD)
    if page.is_visible("#id_otp_token"):
        page.fill("#id_otp_token", otp_code(physician))
    page.click("button:has-text('Sign decision')")
    page.wait_for_load_state()
    assert "Decision signed." in page.content()
    screen(page, "46-physician-slide-signed")
    decision = ReviewDecision.objects.get(review_item__prediction__scan=scan)
    assert decision.outcome == "confirmed" and decision.stage == "metastasis"
    context.close()


def test_a_slide_unlike_the_training_patches_shows_the_warning_and_no_map_in_chromium(
    live_server, browser, celery_worker_process, active_model, clinician, physician, tmp_path
):  # type: ignore[no-untyped-def]
    """Breast ultrasound composed into a slide, sent to the lymph-node model: the
    physician's viewer shows the slide itself, the warning and no stage, overlay or
    regions, and the sign form offers only the physician's own stage."""
    from diagnostics.models import Prediction
    from tests.helpers import api
    from tests.slides_tests import slide_factory as f
    from tests.slides_tests.test_slide_worker import _send, _wait_for_review

    image = f.compose(f.cells_from(SHARED_SLIDES.parent / "busi" / "benign", 48), cols=8)
    data = f.composed_tiff(tmp_path / "ultrasound.tiff", image).read_bytes()
    case = make_case(clinician, n_files=0, ref="PSN-WSI-OOD")
    job = _wait_for_review(_send(api(clinician), case, data, "ultrasound.tiff"))
    prediction = Prediction.objects.get(job=job)
    assert prediction.out_of_distribution

    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    login(page, live_server.url, "physician", PASSWORD)
    page.goto(f"{live_server.url}/review/")
    row = page.locator("#review-rows tbody tr.row-ood")
    assert row.count() == 1 and "outside training data" in row.inner_text()
    page.click("main a[href*='/review/']:has-text('PSN-WSI-OOD')")
    page.wait_for_selector("#viewer[data-ready='1']")
    warning = page.locator("#ood-warning")
    assert warning.is_visible() and "no suggested stage for this slide" in warning.inner_text()
    assert "unlike the patches this model was trained on" in warning.inner_text()
    assert page.get_attribute("#viewer", "data-heatmap-url") is None
    assert page.locator(".region-gallery .region").count() == 0 and page.locator(".predicted").count() == 0
    assert page.locator("input[name=outcome][value=confirmed]").count() == 0
    screen(page, "47-physician-slide-out-of-distribution")
    context.close()
