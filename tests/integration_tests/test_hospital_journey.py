"""The whole hospital loop with real processes: Orthanc holds a study; CancerWeb pulls
it, receives a second by STOW-RS and a third by C-STORE (from its own receiver process,
which turns away an unknown AE title and keeps serving after a refused instance); a
real Celery worker predicts; a physician signs; the worker stores the SR and the
heat map in the original study, read back from Orthanc with QIDO/WADO. A result signed
while Orthanc is down goes out once it is back."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import highdicom as hd
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from django.db import connection
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from diagnostics.models import Exchange, InferenceJob, ReviewItem
from diagnostics.services import integration as svc
from diagnostics.services.reviews import review_sign
from tests.diagnostics_tests.dicom_factory import dicom_bytes
from tests.helpers import PASSWORD, ROOT, free_port
from tests.integration_tests.conftest import multipart, study_bytes

pytestmark = [pytest.mark.worker]


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by the worker process it is listed before: a failed send waits 1 s, not 10."""
    monkeypatch.setenv("CANCERWEB_INTEGRATION_RETRY_BASE_S", "1")
    monkeypatch.setenv("CANCERWEB_INTEGRATION_RETRY_MAX_S", "1")


def _receiver(port: int, log_path):  # type: ignore[no-untyped-def]
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"}
    log = open(log_path, "w")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "dicom_receiver", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while "listening" not in log_path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
        time.sleep(0.2)
    return proc


def _c_store(port: int, calling: str, data: bytes) -> int | None:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CANCERWEB")
    if not assoc.is_established:
        return None
    status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
    assoc.release()
    return int(status.Status)


def _wait(condition, what: str, worker, timeout: float = 180) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.poll() is None, "the worker process died"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_studies_in_by_three_doors_and_the_signed_result_back_in_orthanc(
    fast_retries, celery_worker_process, integration, pacs, physician, tmp_path
):
    account, token = integration
    pulled_uid, pulled = study_bytes(1)
    pacs.upload(pulled[0])
    assert svc.studies_pull(account=account).instances_stored == 1

    stow_uid, stowed = study_bytes(1)
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    body, ctype = multipart(stowed)
    assert client.generic("POST", "/api/v1/dicomweb/studies", data=body, content_type=ctype).status_code == 200

    port = free_port()
    receiver = _receiver(port, tmp_path / "receiver.log")
    try:
        pushed_uid, pushed = study_bytes(1)
        assert _c_store(port, "STRANGER", pushed[0]) is None  # unknown calling AE title: association rejected
        assert _c_store(port, "MODALITY1", dicom_bytes(with_pixels=False)) == 0x0122  # refused, not stored
        assert _c_store(port, "MODALITY1", pushed[0]) == 0x0000  # and the receiver still serves
        # An account made while the receiver runs is let in without a restart.
        svc.integration_account_create(
            acting_user=None, name="Ultrasound room", unit=account.unit, task=account.task, ae_titles=["MODALITY2"]
        )
        assert _c_store(port, "MODALITY2", study_bytes(1)[1][0]) == 0x0000
        assert receiver.poll() is None
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
    assert Exchange.objects.filter(channel="c-store", state="received").count() == 2
    assert Exchange.objects.get(channel="c-store", state="refused").detail["failure_reason"] == "0x0122"

    jobs = InferenceJob.objects.all()
    assert jobs.count() == 4
    _wait(
        lambda: all(j.status == "succeeded" for j in InferenceJob.objects.all()),
        "four predictions",
        celery_worker_process,
    )

    def item_of(study_uid: str) -> ReviewItem:
        for item in ReviewItem.objects.select_related("prediction__scan__case"):
            if svc.study_identifiers(item.prediction.scan.case.study_link)["study_uid"] == study_uid:
                return item
        raise AssertionError("no review item for the study")

    # A CT sent to the lymph-node task is outside what its model was trained on: flagged,
    # no suggestion, so the physician signs an own read (test_results.py sends a heat map).
    item = item_of(pulled_uid)
    assert item.prediction.out_of_distribution
    # Signed while the PACS is up: the worker stores the SR (no heat map for a flagged input).
    decision = review_sign(
        acting_user=physician, review_item=item, outcome="rejected", stage="no-metastasis",
        reason="not a lymph-node section", password=PASSWORD, signing_session=None,
    )  # fmt: skip
    exchange = Exchange.objects.get(direction="outbound", decision=decision)
    _wait(lambda: Exchange.objects.get(pk=exchange.pk).state == "sent", "the SR to be sent", celery_worker_process)

    dicomweb = DICOMwebClient(url=pacs.dicomweb_url)
    modalities = sorted(r["00080060"]["Value"][0] for r in dicomweb.search_for_series(pulled_uid))
    assert modalities == ["CT", "SR"]  # the original image and the report
    (row,) = dicomweb.search_for_instances(pulled_uid, search_filters={"Modality": "SR"})
    sr = hd.sr.ComprehensiveSR.from_dataset(
        dicomweb.retrieve_instance(pulled_uid, row["0020000E"]["Value"][0], row["00080018"]["Value"][0])
    )
    group = [c for c in sr.ContentSequence if c.ValueType == "CONTAINER"][-1].ContentSequence[0]
    stages = {
        e.ConceptNameCodeSequence[0].CodeMeaning: e.ConceptCodeSequence[0].CodeMeaning
        for e in group.ContentSequence
        if e.ValueType == "CODE"
    }
    assert stages["Physician-signed stage"] == decision.stage == "no-metastasis"
    assert "AI-suggested stage" not in stages  # the AI gave none
    assert sr.VerifyingObserverSequence[0].VerifyingObserverName == "Physician^Peter"
    original = pydicom.dcmread(io.BytesIO(pulled[0]))
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == original.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in evidence.ReferencedSOPSequence] == [original.SOPInstanceUID]

    # Signed while the PACS is down: signing succeeds, the send waits and goes out later.
    pacs.stop()
    stowed_item = item_of(stow_uid)
    late = review_sign(
        acting_user=physician, review_item=stowed_item, outcome="rejected", stage="no-metastasis",
        reason="not a lymph-node section", password=PASSWORD, signing_session=None,
    )  # fmt: skip
    waiting = Exchange.objects.get(direction="outbound", decision=late)
    _wait(lambda: Exchange.objects.get(pk=waiting.pk).state == "retrying", "a failed attempt", celery_worker_process)
    pacs.start()
    time.sleep(1.1)
    assert svc.results_sweep() >= 1  # what beat does every CANCERWEB_INTEGRATION_SWEEP_INTERVAL_S
    _wait(lambda: Exchange.objects.get(pk=waiting.pk).state == "sent", "the late SR to be sent", celery_worker_process)
    assert [
        r["00080060"]["Value"][0] for r in dicomweb.search_for_instances(stow_uid, search_filters={"Modality": "SR"})
    ] == ["SR"]
