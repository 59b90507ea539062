"""Clinical rules live in the services and selectors, so the page, the API and every
other door obey them the same way: blinded-first reading, the second factor at signing,
care-unit scope on dashboards, the model folder for bundles, audited reads."""

from __future__ import annotations

import shutil

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import escape

from accounts.models import AuditEvent, User
from diagnostics.models import ModelVersion, Prediction, ReviewDecision
from diagnostics.selectors.dashboards import agreement_by_model, queue_stats
from diagnostics.services.model_registry import model_register
from diagnostics.services.reviews import ReviewRuleError, review_sign, reviewer_preference_set
from tests.factories import ReviewDecisionFactory, make_prediction, store_heatmap
from tests.helpers import PASSWORD, api, image_bytes, login, otp_code, otp_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def blinded_physician(physician: User) -> User:
    reviewer_preference_set(acting_user=physician, blinded_first=True)
    return physician


@pytest.fixture
def prediction(clinician: User, active_model: ModelVersion) -> Prediction:
    # The model says "metastasis" at 83 %: the answer blinded-first must keep hidden.
    return make_prediction(clinician, active_model, [0.17, 0.83])


def test_blinded_first_holds_in_the_api_as_on_the_page(blinded_physician, prediction):
    client = api(blinded_physician)
    item_url = f"/api/v1/review-items/{prediction.review_item.uuid}/"
    hidden = client.get(item_url).json()
    assert hidden["ai_hidden"] is True and hidden["prediction"] is None

    refused = client.post(item_url + "decisions/", {"outcome": "confirmed", "password": PASSWORD}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "blinded_read_required"
    assert not ReviewDecision.objects.exists()

    read = client.post(item_url + "blinded-read/", {"stage": "no-metastasis"}, format="json")
    assert read.status_code == 201
    assert read.json()["ai_hidden"] is False
    assert read.json()["prediction"]["predicted_label"] == "metastasis"
    again = client.post(item_url + "blinded-read/", {"stage": "metastasis"}, format="json")
    assert again.status_code == 400  # recorded once: after the reveal it would not be blind

    signed = client.post(item_url + "decisions/", {"outcome": "confirmed", "password": PASSWORD}, format="json")
    assert signed.status_code == 201 and signed.json()["stage"] == "metastasis"


def test_the_service_itself_refuses_to_sign_before_the_blinded_read(blinded_physician, prediction):
    with pytest.raises(ReviewRuleError) as refused:
        review_sign(
            acting_user=blinded_physician,
            review_item=prediction.review_item,
            outcome="confirmed",
            stage="",
            reason="",
            password=PASSWORD,
            signing_session=None,
        )
    assert refused.value.code == "blinded_read_required"
    # The page says the same: its POST goes through the same service.
    page = login(blinded_physician).post(
        reverse("review_detail", kwargs={"item_uuid": prediction.review_item.uuid}),
        {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(blinded_physician)},
    )
    assert page.status_code == 400 and b"Record your own stage first" in page.content
    assert not ReviewDecision.objects.exists()


def test_blinded_first_hides_the_answer_in_the_queue_page_api_list_and_filters(blinded_physician, prediction):
    rows = login(blinded_physician).get(reverse("review_queue") + "?fragment=1").content.decode()
    assert prediction.scan.case.patient_ref in rows
    assert "Hidden until you record your own stage" in rows
    # The row names the task ("Lymph-node metastasis in …"), never the predicted stage or its confidence.
    answer_cells = rows.replace(str(escape(prediction.model_version.task)), "")
    assert "83 %" not in answer_cells and "metastasis" not in answer_cells

    client = api(blinded_physician)
    [listed] = client.get("/api/v1/review-queue/").json()["results"]
    assert listed["ai_hidden"] is True and listed["prediction"] is None
    # Filtering by the model's stage must not tell the answer either.
    assert client.get("/api/v1/review-queue/?predicted_label=metastasis").json()["results"] == []
    filtered = login(blinded_physician).get(reverse("review_queue") + "?stage=metastasis").content.decode()
    assert prediction.scan.case.patient_ref not in filtered

    client.post(
        f"/api/v1/review-items/{prediction.review_item.uuid}/blinded-read/", {"stage": "metastasis"}, format="json"
    )
    [listed] = client.get("/api/v1/review-queue/?predicted_label=metastasis").json()["results"]
    assert listed["prediction"]["confidence"] == pytest.approx(0.83)


def test_the_heat_map_url_is_refused_while_the_answer_is_hidden(blinded_physician, prediction):
    store_heatmap(prediction, image_bytes())
    url = reverse("review_heatmap", kwargs={"item_uuid": prediction.review_item.uuid})
    client = login(blinded_physician)
    assert client.get(url).status_code == 403
    api(blinded_physician).post(
        f"/api/v1/review-items/{prediction.review_item.uuid}/blinded-read/", {"stage": "metastasis"}, format="json"
    )
    assert client.get(url).status_code == 200


def test_signing_through_the_api_takes_the_authenticator_code(physician, clinician, active_model):
    otp_device(physician)
    client = api(physician)
    first = make_prediction(clinician, active_model, [0.3, 0.7], ref="PSN-A")
    url = f"/api/v1/review-items/{first.review_item.uuid}/decisions/"

    without = client.post(url, {"outcome": "confirmed", "password": PASSWORD}, format="json")
    assert without.status_code == 400 and without.json()["error"]["code"] == "second_factor_failed"
    assert "otp_token" in without.json()["error"]["fields"]
    otp_device(physician).throttle_reset()  # django-otp slows retries after a wrong code
    wrong = client.post(url, {"outcome": "confirmed", "password": PASSWORD, "otp_token": "000000"}, format="json")
    assert wrong.status_code == 400 and not ReviewDecision.objects.exists()
    otp_device(physician).throttle_reset()

    ok = client.post(
        url, {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(physician)}, format="json"
    )
    assert ok.status_code == 201
    # A token has no continuous session: the next signature needs the code again.
    second = make_prediction(clinician, active_model, [0.6, 0.4], ref="PSN-B")
    url = f"/api/v1/review-items/{second.review_item.uuid}/decisions/"
    assert client.post(url, {"outcome": "confirmed", "password": PASSWORD}, format="json").status_code == 400
    otp_device(physician).throttle_reset()
    signed = client.post(
        url, {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(physician)}, format="json"
    )
    assert signed.status_code == 201


def test_a_browser_session_needs_the_code_only_at_its_first_signature(physician, clinician, active_model):
    otp_device(physician)
    session = login(physician)
    items = [make_prediction(clinician, active_model, [0.3, 0.7], ref=f"PSN-S{i}").review_item for i in range(2)]
    first = session.post(
        f"/api/v1/review-items/{items[0].uuid}/decisions/",
        {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(physician)},
        content_type="application/json",
    )
    assert first.status_code == 201
    second = session.post(
        f"/api/v1/review-items/{items[1].uuid}/decisions/",
        {"outcome": "confirmed", "password": PASSWORD},
        content_type="application/json",
    )
    assert second.status_code == 201


def test_dashboards_count_only_the_users_care_units(
    physician, clinician, other_unit_physician, other_unit_clinician, active_model, admin_user
):
    mine = make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-MINE")
    ReviewDecisionFactory(review_item=mine.review_item, physician=physician)
    make_prediction(clinician, active_model, [0.9, 0.1], ref="PSN-MINE-2")  # pending in unit A
    make_prediction(other_unit_clinician, active_model, [0.4, 0.6], ref="PSN-THEIRS")  # pending in unit B

    assert queue_stats(user=physician).pending == 1
    assert queue_stats(user=physician).signed == 1
    assert queue_stats(user=other_unit_physician).pending == 1
    assert queue_stats(user=other_unit_physician).signed == 0
    assert [a.n for a in agreement_by_model(user=physician)] == [1]
    assert agreement_by_model(user=other_unit_physician) == []
    page = login(other_unit_physician).get(reverse("dashboard")).content.decode()
    assert "No signed decisions yet" in page
    # Admins, who manage the models and see no case, see every unit's aggregates.
    assert queue_stats(user=admin_user).pending == 2


def test_the_service_refuses_a_bundle_outside_the_model_folder(tmp_path):
    outside = tmp_path / "bundle"
    shutil.copytree(settings.MODEL_DIR / "demo-pcam", outside)
    for bundle in (outside, "../" + str(outside), "/etc", "no-such-bundle", ""):
        with pytest.raises(ValidationError) as refused:
            model_register(acting_user=None, bundle_dir=bundle)
        assert refused.value.error_dict["bundle"][0].code == "invalid_bundle"
    assert not ModelVersion.objects.exists()


def test_reading_a_case_scan_or_review_item_through_the_api_is_audited(clinician, physician, prediction):
    scan, item = prediction.scan, prediction.review_item
    api(clinician).get(f"/api/v1/cases/{scan.case.uuid}/")
    api(clinician).get(f"/api/v1/scans/{scan.uuid}/")
    api(physician).get(f"/api/v1/review-items/{item.uuid}/")
    views = set(AuditEvent.objects.filter(action="view").values_list("actor__username", "object_type", "object_id"))
    assert ("clinician", "diagnostics.case", str(scan.case.uuid)) in views
    assert ("clinician", "diagnostics.scan", str(scan.uuid)) in views
    assert ("physician", "diagnostics.reviewitem", str(item.uuid)) in views
