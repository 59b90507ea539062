"""An input outside what the model was trained on: the worker flags it with the bundle's
reference, and every door shows the flag and no suggested stage (queue, review page,
API, reader study, DICOM SR); the service refuses to "confirm" a suggestion never made."""

from __future__ import annotations

import io

import pytest
from django.urls import reverse
from PIL import Image

from accounts.models import AuditEvent, User
from diagnostics.ml import ood
from diagnostics.models import ModelVersion, Prediction, ReviewDecision
from diagnostics.services.jobs import job_run
from diagnostics.services.reviews import ReviewRuleError, review_sign
from tests.factories import CaseFactory, ScanFactory, make_prediction, store_heatmap
from tests.helpers import PASSWORD, api, image_bytes, login, sample_bytes
from tests.ml_tests.conftest import PCAM

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

BUSI = PCAM.parent / "busi"


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _predict(user: User, name: str, data: bytes) -> Prediction:
    scan = ScanFactory(case=CaseFactory(created_by=user, patient_ref=f"PSN-{name.upper()[:8]}"), name=name, data=data)
    job_run(job_id=scan.job.id)
    return Prediction.objects.get(scan=scan)


def test_the_worker_flags_ultrasound_and_a_black_square_on_the_lymph_node_task(clinician, active_model):
    """The two inputs a new user tried: a breast ultrasound uploaded to the lymph-node task
    ("no-metastasis 93 %" before) and a 10 x 10 black square ("no-metastasis 98 %")."""
    ultrasound = _predict(clinician, "us.png", sorted((BUSI / "benign").iterdir())[0].read_bytes())
    square = _predict(clinician, "black.png", _png((10, 10), (0, 0, 0)))
    patch = _predict(clinician, "patch.jpg", sample_bytes("pcam-metastasis-1.jpg"))

    assert ultrasound.out_of_distribution and ood.REASON_FEATURES in ultrasound.ood_reasons
    assert ultrasound.ood_score is not None  # the feature distance is stored with every prediction
    assert square.out_of_distribution
    assert {ood.REASON_TOO_SMALL, ood.REASON_BLANK} <= set(square.ood_reasons)
    assert not patch.out_of_distribution and patch.ood_reasons == []
    assert patch.ood_score is not None and patch.ood_score < active_model_threshold()
    created = AuditEvent.objects.get(action="prediction.create", object_id=str(square.uuid))
    assert created.data["out_of_distribution"] is True


def active_model_threshold() -> float:
    from django.conf import settings

    from diagnostics.ml.bundle import read_manifest

    return float(read_manifest(settings.MODEL_DIR / "demo-pcam").ood["threshold"])


@pytest.fixture
def flagged(clinician: User, active_model: ModelVersion) -> Prediction:
    # The model "says" metastasis at 91 %: an answer no door may show for this input.
    prediction = make_prediction(
        clinician, active_model, [0.09, 0.91], ref="PSN-OOD", ood_reasons=(ood.REASON_FEATURES,)
    )
    store_heatmap(prediction, image_bytes())
    return prediction


def test_the_api_returns_the_flag_and_its_reasons_and_no_suggestion(physician, flagged):
    client = api(physician)
    item = client.get(f"/api/v1/review-items/{flagged.review_item.uuid}/").json()
    assert item["out_of_distribution"] is True and item["prediction"] is None
    assert item["ood_reasons"] == [ood.REASON_TEXT[ood.REASON_FEATURES]]
    [listed] = client.get("/api/v1/review-queue/").json()["results"]
    assert listed["out_of_distribution"] is True and listed["prediction"] is None
    # Filtering by the model's stage must not tell the withheld answer either.
    assert client.get("/api/v1/review-queue/?predicted_label=metastasis").json()["results"] == []


def test_confirming_a_suggestion_never_made_is_refused_at_every_door(physician, flagged):
    url = f"/api/v1/review-items/{flagged.review_item.uuid}/decisions/"
    refused = api(physician).post(url, {"outcome": "confirmed", "password": PASSWORD}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_suggestion_to_confirm"
    with pytest.raises(ReviewRuleError) as direct:
        review_sign(
            acting_user=physician,
            review_item=flagged.review_item,
            outcome="confirmed",
            stage="",
            reason="",
            password=PASSWORD,
            signing_session=None,
        )
    assert direct.value.code == "no_suggestion_to_confirm"
    assert not ReviewDecision.objects.exists()
    # The physician's own read, signed as a rejection with a stage and a reason, is the result.
    signed = api(physician).post(
        url,
        {"outcome": "rejected", "stage": "no-metastasis", "reason": "lymph node without tumour", "password": PASSWORD},
        format="json",
    )
    assert signed.status_code == 201, signed.json()
    assert ReviewDecision.objects.get().stage == "no-metastasis"


def test_the_queue_and_review_pages_show_the_warning_and_no_suggested_stage(physician, flagged):
    client = login(physician)
    rows = client.get(reverse("review_queue") + "?fragment=1").content.decode()
    assert "outside training data" in rows and 'class="row-ood"' in rows
    assert "91 %" not in rows
    page = client.get(reverse("review_detail", kwargs={"item_uuid": flagged.review_item.uuid})).content.decode()
    assert "Outside what this model was trained on" in page
    assert ood.REASON_TEXT[ood.REASON_FEATURES] in page
    assert "Predicted:" not in page and "91 %" not in page
    assert 'value="confirmed"' not in page  # the form offers only a rejection with the physician's stage
    assert 'data-predicted=""' in page
    heatmap = reverse("review_heatmap", kwargs={"item_uuid": flagged.review_item.uuid})
    assert client.get(heatmap).status_code == 404


def test_the_signed_result_names_no_ai_stage(physician, flagged):
    from diagnostics.services.integration import signed_result

    review_sign(
        acting_user=physician,
        review_item=flagged.review_item,
        outcome="rejected",
        stage="no-metastasis",
        reason="own read",
        password=PASSWORD,
        signing_session=None,
    )
    result = signed_result(ReviewDecision.objects.get())
    assert result.ai_stage is None and result.stage == "no-metastasis"
    normal = make_prediction(flagged.scan.case.created_by, flagged.model_version, [0.2, 0.8], ref="PSN-IN")
    review_sign(
        acting_user=physician,
        review_item=normal.review_item,
        outcome="confirmed",
        stage="",
        reason="",
        password=PASSWORD,
        signing_session=None,
    )
    assert signed_result(normal.review_item.decisions.get()).ai_stage == "metastasis"

    # The DICOM SR of the flagged result: the signed stage, no AI-suggested stage, and why.
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    from diagnostics.interop import results

    evidence = results.Evidence(
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        sop_class_uid=SecondaryCaptureImageStorage,
        accession_number="ACC-1",
        patient={"PatientID": "PSN-OOD", "PatientName": "Test^Patient"},
        study={},
    )
    sr = results.build_sr(
        evidence=[evidence], result=result, series_uid=generate_uid(), sop_instance_uid=generate_uid()
    )
    # Every text of the SR, nested content items included (str() of a long value is abridged).
    dump = " ".join(str(e.value) for e in sr.iterall() if e.VR in ("LO", "SH", "UT", "ST"))
    assert "AI-suggested stage" not in dump and "the AI gave no suggestion" in dump
    with_ai = results.build_sr(
        evidence=[evidence],
        result=signed_result(normal.review_item.decisions.get()),
        series_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    assert "AI-suggested stage" in " ".join(str(e.value) for e in with_ai.iterall() if e.VR == "LO")
