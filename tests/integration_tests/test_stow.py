"""Studies in by DICOMweb STOW-RS: one case per study, the upload's validation and
de-identification, the standard response with per-instance failure reasons, and every
kind of bad request refused with nothing half-stored."""

from __future__ import annotations

import io

import pytest
from django.db import connection
from django.urls import reverse
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from diagnostics.interop import dicomweb
from diagnostics.models import Case, Exchange, InstanceLink, Scan, StudyLink
from diagnostics.services import integration as svc
from tests.diagnostics_tests.dicom_factory import IDENTIFYING, dicom_bytes
from tests.helpers import api, stored_files
from tests.integration_tests.conftest import multipart, study_bytes

URL = "/api/v1/dicomweb/studies"


def stow(token: str, body: bytes, content_type: str, **extra: str):  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.generic(
        "POST", URL, data=body, content_type=content_type, **{"HTTP_ACCEPT": "application/dicom+json", **extra}
    )


def failures(response) -> list[int]:  # type: ignore[no-untyped-def]
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def stored_uids(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [item["00081155"]["Value"][0] for item in response.json().get("00081199", {}).get("Value", [])]


def test_a_study_becomes_one_case_with_a_keyed_pseudonym_and_encrypted_original_uids(integration):
    account, token = integration
    study_uid, instances = study_bytes(2)
    body, ctype = multipart(instances)
    assert reverse("api_dicomweb_studies") == URL
    response = stow(token, body, ctype)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/dicom+json")
    assert len(stored_uids(response)) == 2 and "00081198" not in response.json()

    # The same study again (and a third instance of it) still makes one case.
    _, more = study_bytes(1)
    third = dicom_bytes(extra={"StudyInstanceUID": study_uid, "StudyDescription": "CHEST CT"})
    again, ctype = multipart([instances[0], third])
    assert stow(token, again, ctype).status_code == 200
    case = Case.objects.get()
    assert case.scans.count() == 3
    assert case.unit == account.unit and case.task == account.task and case.created_by == account.user
    assert case.patient_ref.startswith("PX-")
    assert IDENTIFYING["PatientID"] not in case.patient_ref and "Doe" not in case.patient_ref

    # De-identified like an upload: the stored DICOM has none of the original identifiers.
    from diagnostics.intake import storage

    for scan in Scan.objects.all():
        data = storage.read_bytes(scan.storage_name)
        assert study_uid.encode() not in data
        assert IDENTIFYING["PatientName"].encode() not in data
        assert IDENTIFYING["AccessionNumber"].encode() not in data
    # The link table keeps them, but only encrypted: the raw rows do not contain them.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT identifiers FROM diagnostics_studylink UNION ALL SELECT identifiers FROM diagnostics_instancelink"
        )
        raw = b"".join(bytes(row[0]) for row in cursor.fetchall())
    assert study_uid.encode() not in raw and IDENTIFYING["AccessionNumber"].encode() not in raw
    link = StudyLink.objects.get()
    ids = svc.study_identifiers(link)
    assert ids["study_uid"] == study_uid and ids["accession_number"] == IDENTIFYING["AccessionNumber"]
    assert InstanceLink.objects.count() == 3
    assert Exchange.objects.filter(direction="inbound", state="received").count() == 4  # one repeated
    assert AuditEvent.objects.filter(action="scan.upload", actor=account.user).count() == 3


def test_some_instances_refused_answer_202_with_the_dicom_failure_reasons(integration):
    _, token = integration
    study_uid, (good,) = study_bytes(1)
    no_pixels = dicom_bytes(with_pixels=False, extra={"StudyInstanceUID": study_uid})
    j2k = dicom_bytes(transfer_syntax=JPEG2000Lossless, pixel_bytes=encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64]))
    body, ctype = multipart([good, no_pixels, j2k, b"not a dicom file at all" * 10])
    response = stow(token, body, ctype)
    assert response.status_code == 202, response.content
    assert failures(response) == [
        dicomweb.SOP_CLASS_NOT_SUPPORTED,
        dicomweb.TRANSFER_SYNTAX_NOT_SUPPORTED,
        dicomweb.CANNOT_UNDERSTAND,
    ]
    assert len(stored_uids(response)) == 1
    assert Scan.objects.count() == 1
    refused = Exchange.objects.filter(state="refused").order_by("id")
    assert [e.detail["code"] for e in refused] == [
        "dicom_no_pixel_data",
        "dicom_unsupported_transfer_syntax",
        "unsupported_type",
    ]
    assert "transfer syntax" in refused[1].reason


def test_all_refused_answer_409_and_store_nothing(integration):
    _, token = integration
    before = stored_files()
    body, ctype = multipart([dicom_bytes(with_pixels=False)])
    response = stow(token, body, ctype)
    assert response.status_code == 409
    assert failures(response) == [dicomweb.SOP_CLASS_NOT_SUPPORTED]
    assert not Case.objects.exists() and not Scan.objects.exists() and not StudyLink.objects.exists()
    assert stored_files() == before


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("application/dicom", 400, "not_multipart"),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415, "unsupported_media_type"),
        ('multipart/related; type="application/dicom"', 400, "not_multipart"),
    ],
)
def test_a_body_that_is_not_a_dicom_multipart_is_refused_by_name(integration, content_type, status, code):
    _, token = integration
    response = stow(token, dicom_bytes(), content_type)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert not Case.objects.exists()
    assert Exchange.objects.get().state == "refused"


def test_a_truncated_multipart_body_is_refused(integration):
    _, token = integration
    body, ctype = multipart([dicom_bytes()])
    response = stow(token, body[: len(body) // 2], ctype)
    assert response.status_code == 400
    assert "truncated" in response.json()["error"]["message"]
    assert not Scan.objects.exists()


def test_only_an_integration_token_may_store(integration, clinician):
    body, ctype = multipart([dicom_bytes()])
    assert APIClient().generic("POST", URL, data=body, content_type=ctype).status_code == 401
    user_client = api(clinician)
    assert user_client.generic("POST", URL, data=body, content_type=ctype).status_code in (401, 403)
    assert stow("cwi_not-a-real-token", body, ctype).status_code == 401
    account, token = integration
    account.active = False
    account.save()
    assert stow(token, body, ctype).status_code == 401
    assert not Scan.objects.exists()


class _CountingInput(io.BytesIO):
    """The request body as the WSGI server hands it over, counting what the view reads."""

    consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.consumed += len(data)
        return data

    readline = io.BytesIO.readline


def test_a_2_gb_body_is_refused_from_its_header_before_it_is_read(integration):
    """The declared length decides: the view answers 413 without reading the body."""
    _, token = integration

    def post(stream: _CountingInput, length: int):  # type: ignore[no-untyped-def]
        return APIClient().generic(
            "POST",
            URL,
            data=b"",
            content_type='multipart/related; type="application/dicom"; boundary=b',
            HTTP_AUTHORIZATION=f"Bearer {token}",
            CONTENT_LENGTH=str(length),
            **{"wsgi.input": stream},
        )

    # The control: a declared length within the limit is read (and this body refused).
    small = _CountingInput(b"--b\r\n" + b"\x00" * 4096)
    assert post(small, 4101).status_code == 400
    assert small.consumed == 4101
    stream = _CountingInput(b"--b\r\n" + b"\x00" * 4096)
    response = post(stream, 2 * 1024**3)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert "2,147,483,648 bytes" in response.json()["error"]["message"]
    assert stream.consumed == 0
    assert not Scan.objects.exists()
    assert Exchange.objects.filter(state="refused").latest("id").reason.startswith("too_large")
