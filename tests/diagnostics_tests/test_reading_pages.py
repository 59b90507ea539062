"""The reading pages on the server side: the upload page's JSON endpoint, validated worklist
filters, dashboards against hand-computed numbers, CSV export, notifications (in-app
and e-mail, the periodic overdue check run twice), blinded-first reads, model cards,
heat maps, and who may see each page."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from diagnostics.models import BlindedRead, ModelVersion, Notification, ReviewDecision, ReviewItem, Scan
from diagnostics.selectors.dashboards import agreement_by_model, queue_stats
from diagnostics.services.cases import IncomingFile, case_create
from diagnostics.services.notifications import reviews_notify_overdue
from diagnostics.services.reviews import review_sign
from tests.factories import CaseFactory, UserFactory, make_prediction, make_scan, store_heatmap
from tests.helpers import PASSWORD, image_bytes, login, otp_code, stored_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_stage_model(db) -> ModelVersion:  # type: ignore[no-untyped-def]
    return ModelVersion.objects.create(
        name="toy", version="1", task="toy", labels=["Stage I", "Stage II", "Stage III"], bundle_path="x",
        sha256="0" * 64,
    )  # fmt: skip


def _sign(physician, prediction, stage: str) -> ReviewDecision:  # type: ignore[no-untyped-def]
    if stage == prediction.predicted_label:
        return review_sign(signing_session=None,
            acting_user=physician, review_item=prediction.review_item, outcome="confirmed", stage="", reason="",
            password=PASSWORD,
        )  # fmt: skip
    return review_sign(signing_session=None,
        acting_user=physician, review_item=prediction.review_item, outcome="rejected", stage=stage,
        reason="disagree", password=PASSWORD,
    )  # fmt: skip


# --- upload endpoint ------------------------------------------------------------


def test_upload_endpoint_stores_one_file_and_answers_json(clinician):
    case = CaseFactory(created_by=clinician)
    url = reverse("case_upload_file", kwargs={"case_uuid": case.uuid})
    client = login(clinician)
    good = ContentFile(image_bytes(), name="slide.png")
    response = client.post(url, {"files": good})
    assert response.status_code == 201
    assert response.json()["created"][0]["name"] == "slide.png"
    assert case.scans.count() == 1
    again = client.post(url, {"files": ContentFile(image_bytes(), name="slide.png")})
    assert again.status_code == 200 and again.json()["repeated"][0]["name"] == "slide.png"


def test_upload_endpoint_refuses_bad_input_naming_the_file_and_stores_nothing(clinician):
    case = CaseFactory(created_by=clinician)
    url = reverse("case_upload_file", kwargs={"case_uuid": case.uuid})
    client = login(clinician)
    before = stored_files()
    response = client.post(url, {"files": ContentFile(b"not an image", name="notes.png")})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["file"] == "notes.png" and error["code"] == "unsupported_type"
    two = client.post(url, {"files": [ContentFile(image_bytes(), name="a.png"), ContentFile(b"x", name="b.png")]})
    assert two.status_code == 400 and two.json()["errors"][0]["code"] == "one_file"
    none = client.post(url, {})
    assert none.status_code == 400
    assert Scan.objects.count() == 0 and stored_files() == before
    assert client.get(url).status_code == 405


def test_upload_endpoint_access(clinician, other_clinician, outsider):
    case = CaseFactory(created_by=clinician)
    url = reverse("case_upload_file", kwargs={"case_uuid": case.uuid})
    payload = {"files": ContentFile(image_bytes(), name="a.png")}
    assert login(other_clinician).post(url, payload).status_code == 404
    assert login(outsider).post(url, payload).status_code == 403
    assert Scan.objects.count() == 0


# --- worklists ------------------------------------------------------------------


def test_case_filters_are_validated(clinician):
    client = login(clinician)
    url = reverse("case_list")
    for query, message in [
        ({"status": "lost"}, "Select a valid choice"),
        ({"date_from": "2026-13-40"}, "Enter a valid date"),
        ({"date_from": "2026-05-02", "date_to": "2026-05-01"}, "The start date is after the end date."),
        ({"q": "<script>"}, "Search by case reference"),
        ({"page": "abc"}, "Enter a whole number"),
    ]:
        response = client.get(url, query)
        assert response.status_code == 400, query
        assert message in response.content.decode(), query


def test_case_filters_by_status_stage_date_and_reference(clinician, physician, active_model):
    queued = make_scan(clinician, ref="PSN-Q1").case
    make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-W1", color=(9, 9, 9))
    signed = make_prediction(clinician, active_model, [0.7, 0.3], ref="PSN-S1", color=(8, 8, 8))
    _sign(physician, signed, "metastasis")
    client = login(clinician)

    def refs(**query: str) -> list[str]:
        response = client.get(reverse("case_list"), query)
        assert response.status_code == 200
        return sorted(case.patient_ref for case, _, _ in response.context["rows"])

    assert refs(status="queued") == [queued.patient_ref]
    assert refs(status="awaiting_review") == ["PSN-W1"]
    assert refs(status="signed") == ["PSN-S1"]
    assert refs(stage="metastasis") == ["PSN-S1"]
    assert refs(q="psn-w") == ["PSN-W1"]
    today = timezone.localdate().isoformat()
    assert len(refs(date_from=today, date_to=today)) == 3
    assert refs(date_to="2000-01-01") == []
    fragment = client.get(reverse("case_list"), {"status": "signed", "fragment": "1"})
    assert b"PSN-S1" in fragment.content and b"<h1>" not in fragment.content


def test_review_queue_filters(clinician, physician, active_model):
    make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-M1", color=(1, 2, 3))
    make_prediction(clinician, active_model, [0.8, 0.2], ref="PSN-N1", color=(3, 2, 1))
    client = login(physician)
    response = client.get(reverse("review_queue"), {"stage": "metastasis"})
    assert [i.prediction.scan.case.patient_ref for i in response.context["page"]] == ["PSN-M1"]
    response = client.get(reverse("review_queue"), {"q": "N1"})
    assert [i.prediction.scan.case.patient_ref for i in response.context["page"]] == ["PSN-N1"]
    bad = client.get(reverse("review_queue"), {"stage": "Stage IX"})
    assert bad.status_code == 400 and "Select a valid choice" in bad.content.decode()
    assert login(clinician).get(reverse("review_queue"), {"stage": "Stage IX"}).status_code == 403


# --- dashboards -----------------------------------------------------------------


def test_agreement_matches_hand_computed_values(clinician, physician, admin_user, three_stage_model):
    labels = three_stage_model.labels
    # (physician's stage, model's stage) as indices.
    pairs = [(0, 0), (0, 1), (1, 1), (2, 1), (2, 2), (2, 2)]
    for n, (truth, pred) in enumerate(pairs):
        probs = [0.1, 0.1, 0.1]
        probs[pred] = 0.8
        p = make_prediction(clinician, three_stage_model, probs, ref=f"PSN-H{n}", color=(n * 30, 0, 0))
        _sign(physician, p, labels[truth])
    [a] = agreement_by_model(user=admin_user)
    assert a.n == 6
    assert a.accuracy == pytest.approx(4 / 6)
    assert a.confusion == [[1, 1, 0], [0, 1, 0], [0, 1, 2]]
    by_stage = {s.label: s for s in a.stages}
    # Stage I: P 1/1, R 1/2, F1 2/3. Stage II: P 1/3, R 1/1, F1 1/2. Stage III: P 2/2, R 2/3, F1 4/5.
    assert (by_stage["Stage I"].precision, by_stage["Stage I"].recall) == (1.0, 0.5)
    assert by_stage["Stage I"].f1 == pytest.approx(2 / 3)
    assert by_stage["Stage II"].precision == pytest.approx(1 / 3) and by_stage["Stage II"].f1 == pytest.approx(0.5)
    assert by_stage["Stage III"].recall == pytest.approx(2 / 3) and by_stage["Stage III"].f1 == pytest.approx(0.8)
    assert [s.support for s in a.stages] == [2, 1, 3]
    assert len(a.trend) == 1 and a.trend[0][1] == 6 and a.trend[0][2] == pytest.approx(4 / 6)

    # A correction replaces the decision it supersedes: (2,1) corrected to (1,1).
    item = ReviewItem.objects.get(prediction__scan__case__patient_ref="PSN-H3")
    review_sign(signing_session=None,
        acting_user=physician, review_item=item, outcome="rejected", stage="Stage II", reason="second look",
        password=PASSWORD, supersedes=item.decisions.get(),
    )  # fmt: skip
    [a] = agreement_by_model(user=physician)
    assert a.n == 6 and a.accuracy == pytest.approx(5 / 6)

    response = login(admin_user).get(reverse("dashboard_csv"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    accuracy = next(r for r in rows if r["section"] == "overall" and r["metric"] == "accuracy")
    assert float(accuracy["value"]) == pytest.approx(5 / 6)
    confusion = {(r["stage"], r["predicted_stage"]): r["value"] for r in rows if r["section"] == "confusion"}
    assert confusion[("Stage III", "Stage II")] == "0" and confusion[("Stage II", "Stage II")] == "2"
    page = login(physician).get(reverse("dashboard"))
    assert page.status_code == 200 and b'class="chart confusion"' in page.content


def test_queue_age_and_time_to_signoff(clinician, physician, active_model):
    now = timezone.now()
    done = [make_prediction(clinician, active_model, [0.2, 0.8], ref=f"PSN-T{n}", color=(n, 4, 4)) for n in range(3)]
    waiting = [make_prediction(clinician, active_model, [0.2, 0.8], ref=f"PSN-P{n}", color=(n, 9, 9)) for n in range(2)]
    for p in done:
        _sign(physician, p, "metastasis")
    # Signed after 10, 20 and 60 minutes in the queue; waiting for 30 and 90 minutes.
    for p, minutes in zip(done, [10, 20, 60], strict=True):
        signed_at = p.review_item.decisions.get().signed_at
        ReviewItem.objects.filter(pk=p.review_item.pk).update(created_at=signed_at - timedelta(minutes=minutes))
    for p, minutes in zip(waiting, [30, 90], strict=True):
        ReviewItem.objects.filter(pk=p.review_item.pk).update(created_at=now - timedelta(minutes=minutes))
    stats = queue_stats(user=physician)
    assert stats.signed == 3 and stats.pending == 2
    assert stats.median_signoff_minutes == pytest.approx(20, abs=0.01)
    assert stats.mean_signoff_minutes == pytest.approx(30, abs=0.01)
    assert stats.oldest_minutes == pytest.approx(90, abs=1)
    assert stats.median_age_minutes == pytest.approx(60, abs=1)


def test_dashboard_access(clinician, outsider, client):
    for user in (clinician, outsider):
        assert login(user).get(reverse("dashboard")).status_code == 403
        assert login(user).get(reverse("dashboard_csv")).status_code == 403
    assert client.get(reverse("dashboard")).status_code == 302


# --- notifications --------------------------------------------------------------


def test_signing_notifies_the_case_creator_in_app_and_by_mail(
    physician, care_unit, active_model, mailoutbox, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    from accounts import services as account_services

    creator = UserFactory(username="clara", role="clinician", email="clara@example.org")
    account_services.unit_member_add(acting_user=None, unit=care_unit, user=creator)
    p = make_prediction(creator, active_model, [0.2, 0.8], ref="PSN-MAIL1")
    with django_capture_on_commit_callbacks(execute=True):
        _sign(physician, p, "metastasis")
    note = Notification.objects.get(user=creator)
    assert note.kind == "case_signed" and "PSN-MAIL1" in note.message
    assert note.link == reverse("case_detail", kwargs={"case_uuid": p.scan.case.uuid})
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["clara@example.org"]
    # Mail leaves the hospital: no patient reference in it.
    assert "PSN-MAIL1" not in mailoutbox[0].subject + mailoutbox[0].body
    page = login(creator).get(reverse("notification_list"))
    assert b"PSN-MAIL1" in page.content and page.context["unread_notifications"] == 1


def test_overdue_reminder_task_runs_twice_and_reminds_once(
    clinician, physician, active_model, settings, mailoutbox, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    settings.REVIEW_OVERDUE_MINUTES = 30
    physician.email = "peter@example.org"
    physician.save()
    old = make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-OLD", color=(1, 1, 1))
    make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-NEW", color=(2, 2, 2))
    ReviewItem.objects.filter(pk=old.review_item.pk).update(created_at=timezone.now() - timedelta(minutes=31))
    with django_capture_on_commit_callbacks(execute=True):
        # The task is a thin wrapper (it also drops stale connections, which would end
        # this test's transaction): run what it runs, twice.
        assert reviews_notify_overdue() == 1
        assert reviews_notify_overdue() == 0
    notes = Notification.objects.filter(kind="review_overdue")
    assert [(n.user, n.review_item) for n in notes] == [(physician, old.review_item)]
    assert not Notification.objects.filter(user=clinician).exists()
    assert len(mailoutbox) == 1


def test_overdue_task_is_registered_on_the_default_queue_and_scheduled(settings):  # type: ignore[no-untyped-def]
    from cancerweb.celery import app
    from diagnostics.tasks import notify_overdue_reviews_task

    assert notify_overdue_reviews_task.queue == "default" and notify_overdue_reviews_task.acks_late
    assert "diagnostics.notify_overdue_reviews" in app.tasks
    scheduled = [entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()]
    assert "diagnostics.notify_overdue_reviews" in scheduled


def test_mark_read(clinician, physician, active_model):
    p = make_prediction(clinician, active_model, [0.2, 0.8])
    _sign(physician, p, "metastasis")
    note = Notification.objects.get(user=clinician)
    # Someone else's notification is not theirs to mark.
    assert login(physician).post(reverse("notification_read"), {"notification": str(note.uuid)}).status_code == 302
    note.refresh_from_db()
    assert note.read_at is None
    assert login(clinician).post(reverse("notification_read"), {"notification": "nope"}).status_code == 400
    login(clinician).post(reverse("notification_read"), {"notification": str(note.uuid)})
    note.refresh_from_db()
    assert note.read_at is not None


# --- review screen: blinded first, heat map, model card ---------------------------


def test_blinded_first_hides_the_ai_until_the_physician_records_a_stage(clinician, physician, active_model):
    p = make_prediction(clinician, active_model, [0.2, 0.8])
    client = login(physician)
    assert client.post(reverse("review_settings"), {"blinded_first": "on"}).status_code == 302
    assert AuditEvent.objects.filter(action="reviewer_preference.set").exists()
    url = reverse("review_detail", kwargs={"item_uuid": p.review_item.uuid})
    page = client.get(url)
    assert b'class="predicted"' not in page.content and b"Your stage first" in page.content
    # Signing before the blinded read is refused and writes nothing.
    refused = client.post(url, {"outcome": "confirmed", "password": PASSWORD})
    assert refused.status_code == 400 and not ReviewDecision.objects.exists()
    blinded_url = reverse("review_blinded", kwargs={"item_uuid": p.review_item.uuid})
    assert client.post(blinded_url, {"stage": "Stage IX"}).status_code == 400
    assert client.post(blinded_url, {"stage": "no-metastasis"}).status_code == 302
    again = client.post(blinded_url, {"stage": "metastasis"})
    assert again.status_code == 400 and b"already recorded" in again.content
    page = client.get(url)
    assert b'class="predicted"' in page.content and b"Your blinded stage" in page.content
    signed = client.post(url, {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(physician)})
    assert signed.status_code == 302
    # Both are kept: the blinded read and the signed decision.
    assert BlindedRead.objects.get().stage == "no-metastasis"
    assert ReviewDecision.objects.get().stage == "metastasis"
    assert AuditEvent.objects.filter(action="review.blinded_read").count() == 1
    assert login(clinician).post(blinded_url, {"stage": "metastasis"}).status_code == 403


def test_heatmap_layer_is_offered_only_when_the_prediction_has_one(clinician, physician, active_model):
    p = make_prediction(clinician, active_model, [0.2, 0.8])
    client = login(physician)
    detail = reverse("review_detail", kwargs={"item_uuid": p.review_item.uuid})
    heat_url = reverse("review_heatmap", kwargs={"item_uuid": p.review_item.uuid})
    assert b"data-heatmap-url" not in client.get(detail).content
    assert client.get(heat_url).status_code == 404
    store_heatmap(p, image_bytes())
    assert f'data-heatmap-url="{heat_url}"'.encode() in client.get(detail).content
    response = client.get(heat_url)
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert login(clinician).get(heat_url).status_code == 403


def test_model_card_page(physician, admin_user, clinician, active_model):
    url = reverse("model_card", kwargs={"model_uuid": active_model.uuid})
    page = login(physician).get(url)
    assert page.status_code == 200
    assert f"<h1>Model card: {active_model}</h1>".encode() in page.content
    assert b"<strong>Demonstration model." in page.content
    assert login(admin_user).get(url).status_code == 200
    # A clinician may read how the model that analyses their images was measured.
    assert login(clinician).get(url).status_code == 200
    missing = reverse("model_card", kwargs={"model_uuid": "00000000-0000-0000-0000-000000000000"})
    assert login(physician).get(missing).status_code == 404


def test_worklists_filter_by_care_unit_for_members_of_several_units(clinician, physician, care_unit, other_unit):
    from accounts import services as account_services

    model = ModelVersion.objects.create(
        name="units", version="1", task="t", labels=["I", "II"], bundle_path="x", sha256="0" * 64
    )
    in_a = make_prediction(clinician, model, [0.3, 0.7], ref="PSN-UA")  # while in one unit only
    for user in (clinician, physician):
        account_services.unit_member_add(acting_user=None, unit=other_unit, user=user)
    in_b = case_create(
        acting_user=clinician,
        patient_ref="PSN-UB",
        body_site="breast",
        unit=other_unit,
        files=[IncomingFile(name="b.png", data=image_bytes(color=(9, 9, 9)))],
    )
    client = login(clinician)
    page = client.get(reverse("case_list"), {"unit": str(other_unit.uuid)}).content.decode()
    assert "PSN-UB" in page and "PSN-UA" not in page
    everything = client.get(reverse("case_list")).content.decode()
    assert "PSN-UB" in everything and "PSN-UA" in everything
    refused = client.get(reverse("case_list"), {"unit": "not-a-unit"})
    assert refused.status_code == 400 and "Select a valid choice" in refused.content.decode()
    queue = login(physician).get(reverse("review_queue"), {"unit": str(care_unit.uuid)}).content.decode()
    assert "PSN-UA" in queue
    assert in_b.uuid and in_a.uuid


def test_every_csv_export_escapes_cells_that_a_spreadsheet_would_run_as_formulas(clinician, physician, admin_user):
    from accounts.audit import audit_record
    from core.exports import FORMULA_PREFIXES, safe_cell

    assert [safe_cell(p + "x") for p in FORMULA_PREFIXES] == ["'" + p + "x" for p in FORMULA_PREFIXES]
    assert safe_cell("Stage II") == "Stage II" and safe_cell(-0.5) == -0.5 and safe_cell(None) is None
    # The audit trail: a user name and an object id that start like formulas.
    sly = UserFactory(username="-2+3")
    audit_record(actor=sly, action="test.formula", object_type="x", object_id='=HYPERLINK("http://x")', data={})
    export = login(admin_user).get(reverse("audit_export"), {"action": "test.formula"})
    [row] = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert row["actor"] == "'-2+3"
    assert row["object_id"] == '\'=HYPERLINK("http://x")'
    assert row["action"] == "test.formula"
    # The dashboard: stage labels and model names come from model bundles.
    model = ModelVersion.objects.create(
        name="@evil", version="1", task="t", labels=["=1+1", "Stage II"], bundle_path="x", sha256="1" * 64
    )
    _sign(physician, make_prediction(clinician, model, [0.8, 0.2], ref="PSN-CSV1"), "=1+1")
    rows = list(csv.DictReader(io.StringIO(login(admin_user).get(reverse("dashboard_csv")).content.decode())))
    ours = [r for r in rows if r["model"].startswith("'@evil")]
    assert ours and {r["stage"] for r in ours if r["section"] == "per_stage"} == {"'=1+1", "Stage II"}
    assert not [cell for r in rows for cell in r.values() if cell and cell[0] in "=+@\t\r"]


def test_clicking_a_notification_marks_it_read_and_opens_what_it_is_about(clinician, physician, active_model):
    p = make_prediction(clinician, active_model, [0.2, 0.8])
    _sign(physician, p, "metastasis")
    note = Notification.objects.get(user=clinician)
    client = login(clinician)
    listing = client.get(reverse("notification_list")).content.decode()
    opened = reverse("notification_open", args=[note.uuid])
    assert f'href="{opened}"' in listing  # the list links through the open view
    # Not someone else's to open (nor to mark read).
    assert login(physician).get(opened).status_code == 404
    note.refresh_from_db()
    assert note.read_at is None
    response = client.get(opened)
    assert response.status_code == 302
    assert response["Location"] == reverse("case_detail", args=[p.scan.case.uuid])
    note.refresh_from_db()
    assert note.read_at is not None
    # A link that is not this site's path leads to the list instead.
    Notification.objects.filter(pk=note.pk).update(link="//evil.example/x")
    assert client.get(opened)["Location"] == reverse("notification_list")
