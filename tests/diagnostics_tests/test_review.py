"""The physician's review: queue order, confirm, reject with stage and reason,
signature by password, immutability and corrections, what the clinician sees."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.models import AuditEvent, User
from diagnostics.models import ModelVersion, ReviewDecision, ReviewItem
from diagnostics.services.reviews import review_sign
from tests.factories import make_prediction
from tests.helpers import PASSWORD, login, otp_code

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_stage_model(db) -> ModelVersion:  # type: ignore[no-untyped-def]
    return ModelVersion.objects.create(
        name="toy",
        version="1",
        task="toy",
        labels=["Stage I", "Stage II", "Stage III"],
        bundle_path="x",
        sha256="0" * 64,
    )


def test_queue_orders_most_advanced_then_least_confident_then_oldest(clinician, physician, three_stage_model):
    m = three_stage_model
    low_stage = make_prediction(clinician, m, [0.9, 0.05, 0.05], ref="A", color=(1, 1, 1))
    high_sure = make_prediction(clinician, m, [0.0, 0.1, 0.9], ref="B", color=(2, 2, 2))
    high_unsure = make_prediction(clinician, m, [0.2, 0.3, 0.5], ref="C", color=(3, 3, 3))
    mid_old = make_prediction(clinician, m, [0.1, 0.8, 0.1], ref="D", color=(4, 4, 4))
    mid_new = make_prediction(clinician, m, [0.1, 0.8, 0.1], ref="E", color=(5, 5, 5))
    expected = [high_unsure, high_sure, mid_old, mid_new, low_stage]
    from diagnostics.selectors.reviews import review_queue

    assert [i.prediction for i in review_queue(user=physician)] == expected
    body = login(physician).get(reverse("review_queue")).content.decode()
    positions = [body.index(f">{p.scan.case.patient_ref}</a>") for p in expected]
    assert positions == sorted(positions)


def test_inputs_outside_the_model_come_first_oldest_first_whatever_their_withheld_stage(
    clinician, physician, three_stage_model
):
    """The queue's order must not tell what the page withholds: outside inputs go first,
    among themselves by age alone, not by the stage and confidence nobody may see."""
    from diagnostics.selectors.reviews import review_queue, review_queue_neighbours

    m = three_stage_model
    confident_high = make_prediction(clinician, m, [0.0, 0.1, 0.9], ref="A", color=(1, 1, 1))
    outside_low = make_prediction(
        clinician, m, [0.9, 0.05, 0.05], ref="B", color=(2, 2, 2), ood_reasons=("nearly_blank",)
    )
    uncertain_high = make_prediction(clinician, m, [0.2, 0.3, 0.5], ref="C", color=(3, 3, 3))
    outside_high = make_prediction(
        clinician, m, [0.0, 0.02, 0.98], ref="D", color=(4, 4, 4), ood_reasons=("unlike_training_data",)
    )
    outside_unsure = make_prediction(
        clinician, m, [0.3, 0.4, 0.3], ref="E", color=(5, 5, 5), ood_reasons=("unlike_training_data",)
    )
    expected = [outside_low, outside_high, outside_unsure, uncertain_high, confident_high]
    queue = list(review_queue(user=physician))
    assert [i.prediction for i in queue] == expected
    # The viewer's previous / next keys walk the same order.
    for k, item in enumerate(queue):
        previous, following = review_queue_neighbours(user=physician, item=item)
        assert previous == (queue[k - 1] if k else None)
        assert following == (queue[k + 1] if k + 1 < len(queue) else None)
    body = login(physician).get(reverse("review_queue")).content.decode()
    positions = [body.index(f">{p.scan.case.patient_ref}</a>") for p in expected]
    assert positions == sorted(positions)


def _sign(client, item, **data):  # type: ignore[no-untyped-def]
    # The physician's authenticator code goes with the session's first signature.
    user = User.objects.filter(pk=client.session.get("_auth_user_id")).first()
    if user is not None and "otp_token" not in data:
        data["otp_token"] = otp_code(user)
    return client.post(reverse("review_detail", args=[item.uuid]), data)


def test_physician_sees_image_and_probabilities(clinician, physician, three_stage_model):
    pred = make_prediction(clinician, three_stage_model, [0.2, 0.3, 0.5])
    body = login(physician).get(reverse("review_detail", args=[pred.review_item.uuid])).content.decode()
    assert reverse("scan_image", args=[pred.scan.uuid]) in body
    for label, pct in (("Stage I", "20 %"), ("Stage II", "30 %"), ("Stage III", "50 %")):
        assert label in body and pct in body


def test_rejection_requires_stage_and_reason(clinician, physician, three_stage_model):
    item = make_prediction(clinician, three_stage_model, [0.2, 0.3, 0.5]).review_item
    response = _sign(login(physician), item, outcome="rejected", stage="", reason="", password=PASSWORD)
    assert response.status_code == 400
    body = response.content.decode()
    assert "A rejection needs your stage." in body and "A rejection needs a reason." in body
    assert not ReviewDecision.objects.exists()


def test_signing_needs_the_correct_password(clinician, physician, three_stage_model):
    item = make_prediction(clinician, three_stage_model, [0.2, 0.3, 0.5]).review_item
    response = _sign(login(physician), item, outcome="confirmed", password="not-my-password")
    assert response.status_code == 400
    assert "password is not correct" in response.content.decode()
    assert not ReviewDecision.objects.exists()
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.PENDING


def test_reject_records_stage_reason_signer_and_audit(clinician, physician, three_stage_model):
    item = make_prediction(clinician, three_stage_model, [0.2, 0.3, 0.5]).review_item
    response = _sign(
        login(physician), item, outcome="rejected", stage="Stage I", reason="benign morphology", password=PASSWORD
    )
    assert response.status_code == 302
    decision = ReviewDecision.objects.get()
    assert (decision.outcome, decision.stage, decision.reason) == ("rejected", "Stage I", "benign morphology")
    assert decision.signer_name == "Peter Physician"
    assert decision.physician == physician
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.SIGNED
    assert AuditEvent.objects.filter(action="review.sign", object_id=str(decision.uuid), actor=physician).exists()


def test_confirm_takes_the_predicted_stage(clinician, physician, three_stage_model):
    item = make_prediction(clinician, three_stage_model, [0.2, 0.7, 0.1]).review_item
    assert _sign(login(physician), item, outcome="confirmed", password=PASSWORD).status_code == 302
    assert ReviewDecision.objects.get().stage == "Stage II"


def test_signed_decision_cannot_be_signed_again_and_a_correction_supersedes_it(clinician, physician, three_stage_model):
    item = make_prediction(clinician, three_stage_model, [0.2, 0.7, 0.1]).review_item
    first = review_sign(
        signing_session=None,
        acting_user=physician,
        review_item=item,
        outcome="confirmed",
        stage="",
        reason="",
        password=PASSWORD,
    )
    with pytest.raises(ValidationError):
        review_sign(
            signing_session=None,
            acting_user=physician,
            review_item=item,
            outcome="rejected",
            stage="Stage I",
            reason="x",
            password=PASSWORD,
        )
    # The page offers a correction, which is a new signed record.
    client = login(physician)
    page = client.get(reverse("review_detail", args=[item.uuid])).content.decode()
    assert "Record a correction" in page
    response = _sign(client, item, stage="Stage III", reason="second look: invasive", password=PASSWORD)
    assert response.status_code == 302
    second = ReviewDecision.objects.exclude(pk=first.pk).get()
    assert second.supersedes == first
    assert second.meaning == "corrected"
    first.refresh_from_db()
    assert (first.outcome, first.stage) == ("confirmed", "Stage II")  # unchanged
    # Only the current decision can be corrected.
    with pytest.raises(ValidationError):
        review_sign(
            signing_session=None,
            acting_user=physician,
            review_item=item,
            outcome="rejected",
            stage="Stage I",
            reason="x",
            password=PASSWORD,
            otp_token=otp_code(physician),
            supersedes=first,
        )


def test_rejection_with_a_stage_the_model_does_not_know_is_refused(clinician, physician, three_stage_model):
    item = make_prediction(clinician, three_stage_model, [0.2, 0.7, 0.1]).review_item
    with pytest.raises(ValidationError, match="choose one of the model's stages"):
        review_sign(
            signing_session=None,
            acting_user=physician,
            review_item=item,
            outcome="rejected",
            stage="Stage IV",
            reason="x",
            password=PASSWORD,
        )


def test_clinician_sees_status_then_signed_stage_name_and_time_but_not_the_ai_answer(
    clinician, physician, three_stage_model
):
    pred = make_prediction(clinician, three_stage_model, [0.2, 0.1, 0.7])
    case_url = reverse("case_detail", args=[pred.scan.case.uuid])
    client = login(clinician)
    body = client.get(case_url).content.decode()
    assert "Awaiting review" in body
    assert "Stage III" not in body  # the AI's answer is for the physician
    decision = review_sign(
        signing_session=None,
        acting_user=physician,
        review_item=pred.review_item,
        outcome="rejected",
        stage="Stage II",
        reason="nodal spread limited",
        password=PASSWORD,
    )
    body = client.get(case_url).content.decode()
    assert "Signed" in body
    assert "Stage II" in body
    assert "signed by Peter Physician" in body
    assert decision.signed_at.strftime("%Y-%m-%d %H:%M") in body


def test_clinician_cannot_open_a_review_item(clinician, three_stage_model):
    item = make_prediction(clinician, three_stage_model, [0.2, 0.1, 0.7]).review_item
    client = login(clinician)
    assert client.get(reverse("review_detail", args=[item.uuid])).status_code == 403
    assert _sign(client, item, outcome="confirmed", password=PASSWORD).status_code == 403
    assert not ReviewDecision.objects.exists()
