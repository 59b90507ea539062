"""The three roles' journeys in Debian's headless Chromium against the real app
(pytest-django's live server, PostgreSQL, Redis and a real Celery worker): every
screen is screenshotted and checked with axe-core (no serious or critical findings)."""

from __future__ import annotations

import base64
import csv
import io
import re

import pytest

from diagnostics.models import Notification, ReviewDecision
from diagnostics.services.reviews import review_sign, reviewer_preference_set
from tests.browser_tests.journeys import login, screen
from tests.factories import UserFactory, make_prediction, store_heatmap
from tests.helpers import PASSWORD, ROOT, image_bytes, otp_code

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}


@pytest.mark.worker
def test_clinician_uploads_several_files_and_watches_them_progress(
    live_server, browser, celery_worker_process, active_model, clinician
):  # type: ignore[no-untyped-def]
    context = browser.new_context(bypass_csp=True, viewport=DESKTOP)
    page = context.new_page()
    login(page, live_server.url, "clinician", PASSWORD)
    page.wait_for_url("**/cases/")
    screen(page, "10-clinician-worklist-empty")

    page.click("main >> text=New case")
    page.fill("#id_patient_ref", "PSN-UP-1")
    page.fill("#id_body_site", "sentinel lymph node")
    page.set_input_files("#id_files", [str(ROOT / "samples/pcam-metastasis-1.jpg")])
    screen(page, "11-clinician-new-case")
    page.click("button:has-text('Create case and upload')")
    page.wait_for_url(re.compile(r".*/cases/[0-9a-f-]{36}/$"))
    case_url = page.url

    # Several files at once: two good ones, one the server refuses, one the page refuses.
    page.set_input_files(
        "#id_files",
        files=[
            {
                "name": "pcam-no-metastasis-1.jpg",
                "mimeType": "image/jpeg",
                "buffer": (ROOT / "samples/pcam-no-metastasis-1.jpg").read_bytes(),
            },
            {"name": "extra.png", "mimeType": "image/png", "buffer": image_bytes(color=(30, 60, 200))},
            {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"},
            {"name": "report.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4"},
        ],
    )
    page.click("button:has-text('Upload')")
    page.wait_for_function(
        "document.querySelectorAll('.upload-item[data-state=done], .upload-item[data-state=error]').length === 4",
        timeout=120_000,
    )
    rows = {r.get_attribute("data-file"): r for r in page.locator(".upload-item").all()}
    for name in ("pcam-no-metastasis-1.jpg", "extra.png"):
        assert rows[name].get_attribute("data-state") == "done"
        assert rows[name].locator("progress").evaluate("p => p.value") == 100
    assert "notes.png: the content is not an accepted image type" in rows["notes.png"].inner_text()
    assert "Not sent. report.pdf: not an accepted image type" in rows["report.pdf"].inner_text()
    screen(page, "12-clinician-upload-progress")

    # Drag and drop: a file dropped on the zone uploads the same way.
    png = base64.b64encode(image_bytes(color=(120, 200, 40))).decode()
    data_transfer = page.evaluate_handle(
        """(b64) => { const dt = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'})); return dt; }""",
        png,
    )
    page.dispatch_event("[data-dropzone]", "drop", {"dataTransfer": data_transfer})
    page.wait_for_selector(".upload-item[data-file='dropped.png'][data-state=done]", timeout=60_000)

    # A file the server could not take this time (503): its bar does not look finished,
    # and Retry sends it again.
    answered = []

    def busy_once(route) -> None:  # type: ignore[no-untyped-def]
        if answered:
            route.continue_()
            return
        answered.append(503)
        route.fulfill(status=503, content_type="text/html", body="<h1>Service temporarily unavailable</h1>")

    page.route("**/upload.json", busy_once)
    page.set_input_files(
        "#id_files", files=[{"name": "retried.png", "mimeType": "image/png", "buffer": image_bytes(color=(9, 99, 9))}]
    )
    page.click("button:has-text('Upload')")
    failed = page.locator(".upload-item[data-file='retried.png'][data-state=error]")
    failed.wait_for(timeout=60_000)
    assert "the server answered 503" in failed.inner_text()
    assert failed.locator("progress").evaluate("p => p.value") == 0
    failed.locator("button.upload-retry").click()
    page.wait_for_selector(".upload-item[data-file='retried.png'][data-state=done]", timeout=60_000)
    assert page.locator(".upload-item[data-file='retried.png'] button.upload-retry").count() == 0
    page.unroute("**/upload.json")

    # No reload: the status table follows the worker until every image awaits review.
    page.wait_for_function(
        "document.querySelectorAll('.status-awaiting_review').length === 5", timeout=300_000, polling=1000
    )
    assert page.url == case_url
    assert page.locator(".status-summary").inner_text() == "Awaiting review"
    screen(page, "13-clinician-case-awaiting-review")

    # The worklist, filtered, and a bad filter answered with a message.
    page.goto(f"{live_server.url}/cases/?status=awaiting_review&q=PSN-UP")
    assert page.locator("#case-rows tbody tr").count() == 1
    screen(page, "14-clinician-worklist-filtered")
    response = page.goto(f"{live_server.url}/cases/?status=lost&date_from=2026-13-01")
    assert response is not None and response.status == 400
    assert "Select a valid choice" in page.content() and "Enter a valid date" in page.content()

    page.set_viewport_size(TABLET)
    page.goto(case_url)
    screen(page, "15-clinician-case-tablet")
    context.close()


def join_physicians_unit(user, physician) -> None:  # type: ignore[no-untyped-def]
    """Cases are seen by their unit: put the test's clinician in the physician's unit."""
    from accounts import services as account_services
    from accounts.services import user_units

    account_services.unit_member_add(acting_user=None, unit=user_units(user=physician)[0], user=user)


def _store_heatmap(prediction) -> None:  # type: ignore[no-untyped-def]
    # A test heat map stored the way the worker stores its Grad-CAM maps.
    store_heatmap(prediction, image_bytes(size=(96, 96), color=(255, 0, 0)))


def test_physician_reviews_three_items_by_keyboard_alone(live_server, browser, active_model, physician):  # type: ignore[no-untyped-def]
    clinician = UserFactory(username="clara", role="clinician", email="clara@example.org")
    join_physicians_unit(clinician, physician)
    predictions = [
        make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-K1", color=(10, 20, 30)),
        make_prediction(clinician, active_model, [0.35, 0.65], ref="PSN-K2", color=(40, 50, 60)),
        make_prediction(clinician, active_model, [0.9, 0.1], ref="PSN-K3", color=(70, 80, 90)),
    ]
    for p in predictions:
        _store_heatmap(p)
    labels = list(active_model.labels)

    context = browser.new_context(bypass_csp=True, viewport=DESKTOP)
    page = context.new_page()
    login(page, live_server.url, "physician", PASSWORD)
    page.wait_for_url("**/review/")
    assert page.locator("#review-rows tbody tr").count() == 3
    screen(page, "20-physician-queue")

    keys: list[list[str]] = []  # key presses per reviewed item, password characters excluded

    def press(item_keys: list[str], key: str) -> None:
        item_keys.append(key)
        page.keyboard.press(key)

    def type_secret(text: str) -> None:
        page.keyboard.type(text)

    # Start at the head of the queue (the link of its first row, followed by Enter).
    page.focus("#review-rows tbody tr >> nth=0 >> a")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/review/[0-9a-f-]{36}/$"))
    page.wait_for_selector("#viewer[data-heatmap-loaded='1']", timeout=30_000)
    first_url = page.url

    # Item 1: look at the heat map (h hides, h shows), peek at the next item and come
    # back (n, p), open the help (?), then confirm (c), password, Enter.
    item: list[str] = []
    assert page.get_attribute("#viewer", "data-heatmap-url")
    assert page.get_attribute("#viewer", "data-heatmap-visible") == "1"
    press(item, "h")
    assert page.get_attribute("#viewer", "data-heatmap-visible") == "0"
    assert page.evaluate("() => window.cancerwebViewer.world.getItemAt(1).getOpacity()") == 0
    screen(page, "21-physician-review-heatmap-off")
    press(item, "h")
    assert page.evaluate("() => window.cancerwebViewer.world.getItemAt(1).getOpacity()") == 0.5
    press(item, "?")
    assert page.is_visible("#shortcut-help")
    screen(page, "22-physician-review-heatmap-help")
    press(item, "Escape")
    press(item, "n")
    page.wait_for_url(lambda url: url != first_url)
    press(item, "p")
    page.wait_for_url(first_url)
    page.wait_for_selector("#viewer[data-ready='1']")
    first_predicted = page.locator(".predicted").inner_text()
    press(item, "c")
    assert page.evaluate("() => document.activeElement.id") == "id_password"
    type_secret(PASSWORD)
    # The session's first signature also takes the authenticator's code (21 CFR 11.200).
    assert page.is_visible("#id_otp_token")
    press(item, "Tab")
    assert page.evaluate("() => document.activeElement.id") == "id_otp_token"
    type_secret(otp_code(physician))
    press(item, "Enter")
    page.wait_for_url(lambda url: url != first_url)
    assert "Decision signed." in page.content()
    keys.append(item)

    # Item 2: reject by choosing the other stage by its number, give a reason, sign.
    item = []
    second_url = page.url
    page.wait_for_selector("#viewer[data-ready='1']")
    predicted = page.locator(".predicted").inner_text()
    other = next(i for i, label in enumerate(labels) if label != predicted)
    press(item, str(other + 1))
    assert page.evaluate("() => document.activeElement.id") == "id_reason"
    reason = "no tumour cells"
    item.extend(reason)
    page.keyboard.type(reason)
    press(item, "Tab")
    assert page.evaluate("() => document.activeElement.id") == "id_password"
    type_secret(PASSWORD)
    screen(page, "23-physician-review-reject")
    press(item, "Enter")
    page.wait_for_url(lambda url: url != second_url)
    keys.append(item)

    # Item 3: choosing the AI's own stage by its number confirms it.
    item = []
    page.wait_for_selector("#viewer[data-ready='1']")
    predicted_number = page.get_attribute(".predicted", "data-stage-number")
    press(item, predicted_number)
    assert page.evaluate("() => document.activeElement.id") == "id_password"
    type_secret(PASSWORD)
    press(item, "Enter")
    page.wait_for_url("**/review/")
    keys.append(item)
    assert "Nothing waits for review." in page.content()

    decisions = list(ReviewDecision.objects.order_by("signed_at"))
    assert [d.outcome for d in decisions] == ["confirmed", "rejected", "confirmed"]
    assert decisions[0].stage == first_predicted
    assert decisions[1].stage == labels[other] and decisions[1].reason == reason
    # The confirm path needs 2 keys plus the password: c (or the stage's number), then Enter.
    assert len(keys[2]) == 2
    print(f"\nkey presses per item (password excluded): {[len(k) for k in keys]}: {keys}")

    # The model card behind the viewer's link.
    page.goto(f"{live_server.url}/review/{predictions[0].review_item.uuid}/")
    page.click("text=model card")
    page.wait_for_selector("h1:has-text('Model card')")
    screen(page, "24-physician-model-card")

    # Review screen at tablet width.
    page.set_viewport_size(TABLET)
    page.goto(f"{live_server.url}/review/{predictions[0].review_item.uuid}/")
    page.wait_for_selector("#viewer[data-ready='1']")
    screen(page, "25-physician-review-tablet")
    context.close()

    # The case's creator is told in the app (bell) and by e-mail.
    assert Notification.objects.filter(user=clinician, kind="case_signed").count() == 3
    context = browser.new_context(bypass_csp=True, viewport=DESKTOP)
    page = context.new_page()
    login(page, live_server.url, "clara", PASSWORD)
    assert page.locator(".bell-count").inner_text() == "3"
    page.click(".bell")
    assert page.locator(".notification.unread").count() == 3
    screen(page, "26-clinician-notifications")
    # Clicking one opens its case and marks it read.
    page.click(".notification.unread a >> nth=0")
    page.wait_for_url(re.compile(r".*/cases/[0-9a-f-]{36}/$"))
    assert page.locator(".bell-count").inner_text() == "2"
    page.click(".bell")
    assert page.locator(".notification.unread").count() == 2
    page.click("button:has-text('Mark all as read')")
    page.wait_for_load_state()
    assert page.locator(".bell-count").inner_text() == "0"
    context.close()


def test_physician_blinded_first_records_a_stage_before_the_reveal(live_server, browser, active_model, physician):  # type: ignore[no-untyped-def]
    clinician = UserFactory(username="clara", role="clinician")
    join_physicians_unit(clinician, physician)
    prediction = make_prediction(clinician, active_model, [0.3, 0.7], ref="PSN-BL1")
    reviewer_preference_set(acting_user=physician, blinded_first=True)
    context = browser.new_context(bypass_csp=True, viewport=DESKTOP)
    page = context.new_page()
    login(page, live_server.url, "physician", PASSWORD)
    page.wait_for_url("**/review/")
    assert page.locator("#review-rows tbody tr").count() == 1
    # The queue is live: a prediction that arrives now appears without a reload.
    make_prediction(clinician, active_model, [0.6, 0.4], ref="PSN-BL2", color=(5, 5, 5))
    page.wait_for_function("document.querySelectorAll('#review-rows tbody tr').length === 2", timeout=30_000)
    assert "PSN-BL2" in page.locator("#review-rows").inner_text()
    page.goto(f"{live_server.url}/review/{prediction.review_item.uuid}/")
    assert page.locator(".predicted").count() == 0  # the AI's answer is hidden
    screen(page, "27-physician-blinded-first")
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.wait_for_selector(".blinded-read")
    assert page.locator(".predicted").inner_text() == "metastasis"
    assert prediction.review_item.blinded_reads.get().stage == "no-metastasis"
    screen(page, "28-physician-blinded-revealed")
    context.close()


def test_admin_reads_the_dashboard_and_exports_csv(live_server, browser, active_model, physician, admin_user):  # type: ignore[no-untyped-def]
    clinician = UserFactory(username="clara", role="clinician")
    join_physicians_unit(clinician, physician)
    # Physician's truth vs the model: (pred, truth) = (1,1), (1,1), (1,0), (0,0): accuracy 3/4.
    plan = [([0.1, 0.9], None), ([0.2, 0.8], None), ([0.3, 0.7], "no-metastasis"), ([0.6, 0.4], None)]
    for n, (probs, rejected_as) in enumerate(plan):
        p = make_prediction(clinician, active_model, probs, ref=f"PSN-D{n}", color=(n * 50, 10, 10))
        review_sign(
            signing_session=None,
            acting_user=physician,
            review_item=p.review_item,
            outcome="rejected" if rejected_as else "confirmed",
            stage=rejected_as or "",
            reason="disagree" if rejected_as else "",
            password=PASSWORD,
        )
    context = browser.new_context(bypass_csp=True, viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    login(page, live_server.url, "admin", PASSWORD)
    # The admin lands in the Django administration; the dashboard is one address away.
    page.goto(f"{live_server.url}/dashboard/")
    assert page.locator("[data-stat=accuracy]").inner_text() == "0.750"
    assert page.locator("[data-stat=n]").inner_text() == "4"
    # metastasis: precision 2/3, recall 2/2; no-metastasis: precision 1/1, recall 1/2.
    assert page.locator("tr[data-stage=metastasis] td").nth(0).inner_text() == "0.667"
    assert page.locator("tr[data-stage=no-metastasis] td").nth(1).inner_text() == "0.500"
    assert page.locator("svg.confusion rect[data-row='0'][data-col='1']").get_attribute("data-count") == "1"
    screen(page, "30-admin-dashboard")
    with page.expect_download() as info:
        page.click("#export-csv")
    text = open(info.value.path(), encoding="utf-8").read()  # noqa: PTH123, SIM115
    rows = list(csv.DictReader(io.StringIO(text)))
    accuracy = next(r for r in rows if r["section"] == "overall" and r["metric"] == "accuracy")
    assert float(accuracy["value"]) == pytest.approx(0.75)
    f1 = next(r for r in rows if r["stage"] == "metastasis" and r["metric"] == "f1")
    assert float(f1["value"]) == pytest.approx(0.8)
    page.set_viewport_size(TABLET)
    page.reload()
    screen(page, "31-admin-dashboard-tablet")

    # Five wrong passwords lock clara at this workstation; the admin lifts it.
    from django.test import Client

    for _ in range(5):
        Client().post("/accounts/login/", {"username": "clara", "password": "wrong-password"})
    page.set_viewport_size(DESKTOP)
    page.click("nav >> text=Lockouts")
    row = page.locator("tr[data-lockout='clara@127.0.0.1']")
    assert row.count() == 1
    screen(page, "32-admin-lockouts")
    row.locator("button:has-text('Unlock')").click()
    page.wait_for_load_state()
    assert "Unlocked clara at 127.0.0.1" in page.locator(".messages").inner_text()
    assert page.locator("tr[data-lockout='clara@127.0.0.1']").count() == 0
    context.close()
