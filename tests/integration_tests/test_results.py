"""Signed results back to the PACS: after a physician signs, the DICOM SR (TID 1500)
and the heat-map Secondary Capture land in the original study in Orthanc, read back
with QIDO-RS/WADO-RS; a correction sends a new SR naming the one it replaces; with
Orthanc down signing still succeeds and the result goes out once it is back. The FHIR
DiagnosticReport validates with fhir.resources (R4B) and matches the decision."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from django.test import override_settings
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from PIL import Image

from accounts.models import AuditEvent
from diagnostics.models import Exchange, ReviewItem
from diagnostics.services import integration as svc
from diagnostics.services.reviews import review_sign
from tests.factories import PredictionFactory
from tests.helpers import PASSWORD, api
from tests.integration_tests.conftest import study_bytes


def _heatmap_png() -> bytes:
    out = io.BytesIO()
    ramp = np.linspace(0, 255, 32 * 32, dtype=np.uint8).reshape(32, 32)
    Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], axis=-1)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def received(integration, active_model):  # type: ignore[no-untyped-def]
    """A study received from the PACS, with a prediction waiting for review."""
    account, _ = integration
    study_uid, instances = study_bytes(1)
    outcome = svc.instance_receive(account=account, data=instances[0], channel=Exchange.Channel.STOW_RS)
    assert outcome.stored, outcome.message
    PredictionFactory(job=outcome.scan.job, model_version=active_model, heatmap_png=_heatmap_png())
    item = ReviewItem.objects.get(prediction__scan=outcome.scan)
    return account, study_uid, outcome.sop_instance_uid, item


def _sign(item, physician, supersedes=None):  # type: ignore[no-untyped-def]
    labels = list(item.prediction.labels)
    other = next(label for label in labels if label != item.prediction.predicted_label)
    return review_sign(
        acting_user=physician,
        review_item=item,
        outcome="rejected",
        stage=other,
        reason="tumour cells at the margin" if supersedes is None else "second look: margin clear",
        password=PASSWORD,
        signing_session=None,
        supersedes=supersedes,
    )


def _pacs_instances(pacs, study_uid: str, modality: str) -> list:  # type: ignore[no-untyped-def]
    client = DICOMwebClient(url=pacs.dicomweb_url)
    found = client.search_for_instances(study_instance_uid=study_uid, search_filters={"Modality": modality})
    return [
        client.retrieve_instance(study_uid, row["0020000E"]["Value"][0], row["00080018"]["Value"][0]) for row in found
    ]


def test_a_signed_result_lands_in_the_original_study_as_sr_and_heat_map(
    received, physician, pacs, django_capture_on_commit_callbacks
):
    account, study_uid, original_sop, item = received
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        decision = _sign(item, physician)
    exchange = Exchange.objects.get(direction="outbound", decision=decision)
    assert exchange.state == "pending" and callbacks  # sent after commit, by a task
    svc.result_send(exchange_id=exchange.id)
    exchange.refresh_from_db()
    assert exchange.state == "sent", exchange.reason
    assert exchange.attempts == 1
    assert svc.result_send(exchange_id=exchange.id) is None  # a second delivery is a no-op

    (sr_ds,) = _pacs_instances(pacs, study_uid, "SR")
    sr = hd.sr.ComprehensiveSR.from_dataset(sr_ds)
    assert sr.StudyInstanceUID == study_uid
    assert sr.PatientID == "NHS-943-476-5919"  # filed under the hospital's patient, from the link table
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName == "Physician^Peter"
    assert sr.VerifyingObserverSequence[0].VerificationDateTime == decision.signed_at.strftime("%Y%m%d%H%M%S")
    groups = [c for c in sr.ContentSequence if c.ValueType == "CONTAINER"]
    assert groups, "no imaging measurements container"
    group = groups[-1].ContentSequence[0]
    evaluations = {
        e.ConceptNameCodeSequence[0].CodeMeaning: e.ConceptCodeSequence[0].CodeMeaning
        for e in group.ContentSequence
        if e.ValueType == "CODE"
    }
    assert evaluations["Physician-signed stage"] == decision.stage
    assert evaluations["AI-suggested stage"] == item.prediction.predicted_label
    referenced = [
        ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for ref in group.ContentSequence
        if ref.ValueType == "IMAGE"
    ]
    assert referenced == [original_sop]
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [e.ReferencedSOPInstanceUID for e in evidence] == [original_sop]
    text = " ".join(str(c.get("TextValue", "")) for c in sr.ContentSequence)
    assert "Peter Physician" in text and "rejected" in text

    (sc,) = _pacs_instances(pacs, study_uid, "OT")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.StudyInstanceUID == study_uid
    assert sc.pixel_array.shape == (32, 32, 3)

    events = AuditEvent.objects.filter(action="integration.result_send", object_id=str(exchange.uuid))
    assert [e.data["outcome"] for e in events] == ["sent"]

    # The FHIR report: validated by fhir.resources' R4B models, matching the decision,
    # and linked from the case's API.
    client = api(physician)
    response = client.get(f"/api/v1/fhir/DiagnosticReport/{decision.uuid}", HTTP_ACCEPT="application/fhir+json")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/fhir+json")
    report = DiagnosticReport.model_validate(response.json())
    assert report.status == "final"
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{study_uid}"
    observation = report.contained[0]
    assert observation.valueCodeableConcept.text == decision.stage
    assert observation.performer[0].display == decision.signer_name
    case = client.get(f"/api/v1/cases/{item.prediction.scan.case.uuid}/").json()
    assert case["scans"][0]["result"]["fhir_diagnostic_report"] == f"/api/v1/fhir/DiagnosticReport/{decision.uuid}"

    # A correction: a new SR that names the first one as its predecessor; FHIR "amended".
    correction = _sign(ReviewItem.objects.get(pk=item.pk), physician, supersedes=decision)
    second = Exchange.objects.get(direction="outbound", decision=correction)
    svc.result_send(exchange_id=second.id)
    second.refresh_from_db()
    assert second.state == "sent", second.reason
    srs = {ds.SOPInstanceUID: ds for ds in _pacs_instances(pacs, study_uid, "SR")}
    newer = srs[second.detail["sr_uid"]]
    predecessor = newer.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == exchange.detail["sr_uid"]
    amended = DiagnosticReport.model_validate(client.get(f"/api/v1/fhir/DiagnosticReport/{correction.uuid}").json())
    assert amended.status == "amended"


@override_settings(INTEGRATION_RETRY_BASE_S=1, INTEGRATION_RETRY_MAX_S=1)
def test_with_the_pacs_down_signing_succeeds_and_the_result_goes_out_when_it_is_back(received, physician, pacs):
    account, study_uid, _, item = received
    pacs.stop()
    decision = _sign(item, physician)  # runs the on-commit send too: it must not fail the signing
    exchange = Exchange.objects.get(direction="outbound", decision=decision)
    svc.result_send(exchange_id=exchange.id)
    exchange.refresh_from_db()
    assert exchange.state == "retrying" and "unreachable" in exchange.reason
    assert exchange.next_attempt_at is not None
    pacs.start()
    exchange.next_attempt_at = exchange.created_at  # due now
    exchange.save()
    svc.result_send(exchange_id=exchange.id)
    exchange.refresh_from_db()
    assert exchange.state == "sent", exchange.reason
    outcomes = [
        e.data["outcome"]
        for e in AuditEvent.objects.filter(action="integration.result_send", object_id=str(exchange.uuid)).order_by(
            "id"
        )
    ]
    assert outcomes == ["retrying", "sent"]
    assert len(_pacs_instances(pacs, study_uid, "SR")) == 1


def test_the_fhir_report_is_out_of_reach_of_other_units(received, physician, other_unit_physician, outsider):
    _, _, _, item = received
    decision = _sign(item, physician)
    assert api(other_unit_physician).get(f"/api/v1/fhir/DiagnosticReport/{decision.uuid}").status_code == 404
    assert api(outsider).get(f"/api/v1/fhir/DiagnosticReport/{decision.uuid}").status_code == 404
    assert api().get(f"/api/v1/fhir/DiagnosticReport/{decision.uuid}").status_code == 401
