"""A physician meets an input outside what the model was trained on, in Debian's headless
Chromium: the queue flags it, the review shows the warning and no suggested stage, and
the keyboard path signs the physician's own stage as a rejection ("c" confirms nothing)."""

from __future__ import annotations

import pytest

from diagnostics.ml import ood
from diagnostics.models import ReviewDecision
from tests.browser_tests.journeys import login, screen
from tests.factories import make_prediction, store_heatmap
from tests.helpers import PASSWORD, image_bytes, otp_code

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_physician_sees_the_out_of_distribution_warning_and_signs_an_own_read(  # type: ignore[no-untyped-def]
    live_server, browser, active_model, physician, clinician
):
    flagged = make_prediction(
        clinician, active_model, [0.07, 0.93], ref="PSN-OOD1", ood_reasons=(ood.REASON_TOO_SMALL, ood.REASON_BLANK)
    )
    store_heatmap(flagged, image_bytes())
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    login(page, live_server.url, "physician", PASSWORD)
    page.wait_for_url("**/review/")
    row = page.locator("#review-rows tbody tr.row-ood")
    assert row.count() == 1 and "outside training data" in row.inner_text()
    assert "93 %" not in page.locator("#review-rows").inner_text()
    screen(page, "40-physician-queue-out-of-distribution")

    page.goto(f"{live_server.url}/review/{flagged.review_item.uuid}/")
    page.wait_for_selector("#viewer[data-ready='1']")
    warning = page.locator("#ood-warning")
    assert warning.is_visible()
    assert ood.REASON_TEXT[ood.REASON_TOO_SMALL] in warning.inner_text()
    assert page.locator(".predicted").count() == 0 and "93 %" not in page.content()
    assert page.get_attribute("#viewer", "data-heatmap-url") is None
    assert page.locator("input[name=outcome][value=confirmed]").count() == 0
    screen(page, "41-physician-review-out-of-distribution")

    page.keyboard.press("c")  # nothing to confirm: focus stays off the password
    assert page.evaluate("() => document.activeElement.id") != "id_password"
    page.keyboard.press("1")  # the physician's own stage, as a rejection of no suggestion
    assert page.evaluate("() => document.activeElement.id") == "id_reason"
    page.keyboard.type("image too small to read; no tumour seen at this size")
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", otp_code(physician))
    page.click("#sign-form button[type=submit]")
    page.wait_for_url("**/review/")
    decision = ReviewDecision.objects.get()
    assert decision.outcome == "rejected" and decision.stage == "no-metastasis"
    context.close()
