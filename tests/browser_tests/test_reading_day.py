"""A reading day in Debian's headless Chromium, one login per persona: the review
queue's rows and order, the viewer's window control, heat-map colour scale and the
case's images side by side, blinded-first rows, the clinician's partly signed case
with the physician's reason, the new-case form without a preselected task, the
"queued" banner that goes when the status moves on, and the admin's model-version
page, audit trail and dashboard. Every screen is screenshotted and checked by axe-core."""

from __future__ import annotations

import io
import re
from collections import Counter

import pytest
from django.conf import settings

from diagnostics.models import InferenceJob, Scan
from diagnostics.selectors.reviews import review_queue
from diagnostics.services.model_registry import model_register
from diagnostics.services.reviews import reviewer_preference_set
from tests.browser_tests.journeys import login, screen
from tests.factories import PredictionFactory, ReviewDecisionFactory, make_case, make_prediction, store_heatmap
from tests.helpers import PASSWORD, ROOT, image_bytes

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP = {"width": 1280, "height": 800}
LYMPH = "Lymph-node metastasis in H&E patches"


def _mean_grey(png: bytes) -> float:
    from PIL import Image, ImageStat

    return float(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).mean[0])


def _set_range(page, selector: str, value: int) -> None:  # type: ignore[no-untyped-def]
    page.eval_on_selector(
        selector, "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true})); }", value
    )


def test_a_reading_day_for_physician_clinician_and_admin(  # type: ignore[no-untyped-def]
    live_server, browser, active_model, clinician, physician, admin_user
):
    base = live_server.url
    case = make_case(clinician, ref="PSN-DAY-1", n_files=3)
    scans = list(Scan.objects.filter(case=case).order_by("id"))
    # demo-pcam calls a prediction uncertain below 60 %: the 55 % one leads the queue
    # although a confident "metastasis" (the more advanced stage) is waiting too.
    confident_benign, uncertain, confident_tumour = (
        PredictionFactory(job=s.job, model_version=active_model, probabilities=p)
        for s, p in zip(scans, [[0.9, 0.1], [0.45, 0.55], [0.2, 0.8]], strict=True)
    )
    assert uncertain.uncertain and not confident_tumour.uncertain
    store_heatmap(confident_tumour, image_bytes(size=(96, 96), color=(255, 0, 0)))

    context = browser.new_context(bypass_csp=True, viewport=DESKTOP)
    page = context.new_page()
    thumbnails: list[str] = []
    page.on("request", lambda r: thumbnails.append(r.url) if r.url.endswith("/thumbnail.png") else None)
    login(page, base, "physician", PASSWORD)
    page.wait_for_url("**/review/")

    # The queue: what each row is, and the order the header states.
    assert "uncertain about first" in page.locator(".queue-order").inner_text()
    rows = page.locator("#review-rows tbody tr")
    assert rows.count() == 3
    expected = [str(i.uuid) for i in review_queue(user=physician)]
    assert [rows.nth(i).get_attribute("data-item") for i in range(3)] == expected
    assert expected[0] == str(uncertain.review_item.uuid)
    first = rows.nth(0)
    assert "row-uncertain" in (first.get_attribute("class") or "")
    assert first.locator(".badge.uncertain").count() == 1
    assert rows.nth(1).locator(".badge.uncertain").count() == 0
    for i in range(3):
        row = rows.nth(i)
        assert row.locator("img.thumb").evaluate("img => img.complete && img.naturalWidth > 0")
        assert re.fullmatch(r"s[0-2]\.png", row.locator(".file-name").inner_text())
        assert LYMPH in row.locator(".task").inner_text()
        assert re.fullmatch(r"\d+\xa0minutes?", row.locator(".waiting").inner_text())
    screen(page, "40-physician-queue-rows")
    # A new item arrives: the live queue adds its row and keeps the thumbnails it shows
    # (each fetch of a scan's picture is an audited opening).
    assert len(thumbnails) == 3
    make_prediction(clinician, active_model, [0.7, 0.3], ref="PSN-DAY-9", color=(9, 99, 9))
    page.wait_for_function("document.querySelectorAll('#review-rows tbody tr').length === 4", timeout=30_000)
    page.wait_for_function(
        "[...document.querySelectorAll('#review-rows img.thumb')].every(i => i.complete && i.naturalWidth > 0)"
    )  # the new row's picture loaded (lazily: it is fetched once it is in view)
    assert sorted(Counter(thumbnails).values()) == [1, 1, 1, 1]

    # The viewer: window control on the picture, the heat map's colour scale.
    page.goto(f"{base}/review/{confident_tumour.review_item.uuid}/")
    page.wait_for_selector("#viewer[data-heatmap-loaded='1']", timeout=30_000)
    legend = page.locator("#heat-legend")
    assert legend.locator("img").evaluate("img => img.complete && img.naturalWidth === 256")
    assert legend.locator("figcaption").inner_text().split("\n") == ["low", "model attention (Grad-CAM)", "high"]
    page.uncheck("#heatmap-toggle")  # judge the image alone
    before = _mean_grey(page.locator("#viewer").screenshot())
    _set_range(page, "#window-level", 85)
    _set_range(page, "#window-width", 30)
    assert page.get_attribute("#viewer", "data-window") == "85/30"
    assert page.locator("#window-level-value").inner_text() == "85 %"
    page.wait_for_timeout(200)
    darker = _mean_grey(page.locator("#viewer").screenshot())
    assert darker < before - 20, (before, darker)  # a high level darkens what is shown
    page.check("#heatmap-toggle")
    screen(page, "41-physician-review-window-legend")
    page.focus("body")
    page.keyboard.press("w")
    assert page.get_attribute("#viewer", "data-window") == ""
    assert abs(_mean_grey(page.locator("#viewer").screenshot()) - before) < 40  # heat map on again

    # All of the case's images side by side, each with the way to its review.
    page.click("#case-images-link")
    page.wait_for_url(f"**/cases/{case.uuid}/images/")
    figures = page.locator("#case-images figure")
    assert figures.count() == 3
    all_loaded = "[...document.querySelectorAll('#case-images img')].every(i => i.complete && i.naturalWidth > 0)"
    page.wait_for_function(all_loaded)
    assert page.locator("#case-images a:has-text('review')").count() == 3
    assert "metastasis" not in page.locator("#case-images").inner_text()  # no AI answer here
    screen(page, "42-physician-case-images")

    # Blinded-first: the rows keep image, file, task and waiting time, but say nothing
    # of the AI's answer, its uncertainty included.
    reviewer_preference_set(acting_user=physician, blinded_first=True)
    page.goto(f"{base}/review/")
    assert page.locator("#review-rows tbody tr").count() == 4
    assert page.locator("#review-rows .badge.uncertain, #review-rows tr.row-uncertain").count() == 0
    assert page.locator("#review-rows .ai-hidden").count() == 4
    assert page.locator("#review-rows img.thumb").count() == 4
    screen(page, "43-physician-queue-blinded")
    reviewer_preference_set(acting_user=physician, blinded_first=False)
    context.close()

    # Two of three signed (by a colleague of the unit): one confirmed, one overruled with a reason.
    ReviewDecisionFactory(review_item=confident_tumour.review_item)
    reason = "no tumour cells in the sinus"
    ReviewDecisionFactory(review_item=uncertain.review_item, outcome="rejected", stage="no-metastasis", reason=reason)
    model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "busi-small-cnn", activate=True)

    context = browser.new_context(bypass_csp=True, viewport=DESKTOP)
    page = context.new_page()
    login(page, base, "clinician", PASSWORD)
    page.goto(f"{base}/cases/{case.uuid}/")
    assert page.locator(".status-summary").inner_text() == "2 of 3 images signed; 1 awaiting review"
    assert page.locator(".case-task").inner_text() == LYMPH
    overruled = page.locator(f"tr[data-scan='{uncertain.scan.uuid}']")
    assert overruled.locator(".signed-stage").inner_text() == "no-metastasis"
    assert overruled.locator(".badge.overruled").inner_text() == "AI overruled"
    assert overruled.locator(".decision-reason").inner_text() == f"Reason: {reason}"
    confirmed = page.locator(f"tr[data-scan='{confident_tumour.scan.uuid}']")
    assert confirmed.locator(".badge.overruled").count() == 0
    assert "agreed with the AI's suggestion" in confirmed.inner_text()
    assert "The AI suggested metastasis" in overruled.inner_text()
    screen(page, "44-clinician-case-partly-signed")

    # New case: two tasks are active, none is preselected, and a missing one is refused.
    page.goto(f"{base}/cases/new/")
    assert page.input_value("#id_task") == ""
    page.fill("#id_patient_ref", "PSN-DAY-2")
    page.fill("#id_body_site", "sentinel lymph node")
    page.set_input_files("#id_files", [str(ROOT / "samples/pcam-metastasis-1.jpg")])
    page.click("button:has-text('Create case and upload')")
    page.wait_for_load_state()
    assert "Choose the task to analyse for" in page.content()
    screen(page, "45-clinician-new-case-task-required")

    # The "queued" banner goes as soon as no image of the case is queued any more.
    page.select_option("#id_task", label=LYMPH)
    page.set_input_files("#id_files", [str(ROOT / "samples/pcam-metastasis-1.jpg")])
    page.click("button:has-text('Create case and upload')")
    page.wait_for_url(re.compile(r".*/cases/[0-9a-f-]{36}/$"))
    assert page.locator(".messages li.analysis-queued").count() == 1
    InferenceJob.objects.filter(scan__case__patient_ref="PSN-DAY-2").update(status=InferenceJob.Status.RUNNING)
    page.wait_for_selector(".status-running", timeout=20_000)
    assert page.locator(".messages li.analysis-queued").count() == 0
    context.close()

    # Admin: "View site" leads to the site, a model version reads as a record, the
    # audit trail fits the window, the dashboard marks what is undefined or small.
    context = browser.new_context(bypass_csp=True, viewport=DESKTOP)
    page = context.new_page()
    login(page, base, "admin", PASSWORD)
    page.goto(f"{base}/admin/")
    page.click("a:has-text('View site')")
    page.wait_for_url("**/dashboard/")
    assert page.locator("h1").first.inner_text() != "Site administration"
    page.goto(f"{base}/admin/diagnostics/modelversion/{active_model.pk}/change/")
    assert page.locator("input[type=submit]").count() == 0  # no Save buttons
    text = page.locator("#content").inner_text()
    assert "no-metastasis → metastasis" in text and '{"' not in text and "['" not in text
    assert "report split (validation split, seeded half B (1454 images), used for neither" in text
    assert "accuracy 0.867" in text
    screen(page, "46-admin-model-version-readonly")

    page.goto(f"{base}/accounts/audit/")
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    values = page.locator("table.audit td.audit-values").all_inner_texts()
    assert values and not any(v.lstrip().startswith("{") for v in values)
    assert page.locator("table.audit td.audit-object a:has-text('physician')").count() >= 1
    assert page.locator("table.audit td.audit-object:has-text('Case: ')").count() >= 1
    screen(page, "47-admin-audit-trail")

    page.goto(f"{base}/dashboard/")
    section = page.locator(f"section.agreement[data-model='{active_model.uuid}']")
    assert section.locator("[data-stat=accuracy]").inner_text() == "0.500"
    # Wilson 95 % interval of 1 of 2: 0.095 to 0.905.
    assert section.locator("[data-stat=accuracy-ci]").inner_text() == "(95 % CI 0.095–0.905, Wilson)"
    assert section.locator("[data-stat=small-sample]").count() == 1
    # The model never predicted no-metastasis: precision is undefined, not 0.000.
    benign = section.locator("tr[data-stage=no-metastasis] td")
    assert [benign.nth(i).inner_text() for i in range(3)] == ["—", "0.000", "—"]
    screen(page, "48-admin-dashboard-undefined-and-interval")
    context.close()
