"""Upload through the browser form: validation by content, limits, all-or-nothing."""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from accounts.models import AuditEvent
from diagnostics.models import Case, InferenceJob, Scan
from tests.helpers import image_bytes, login, sample_bytes, stored_files

pytestmark = [pytest.mark.django_db, pytest.mark.storage]


def _post_case(client, files, **fields):  # type: ignore[no-untyped-def]
    data = {"patient_ref": "PSN-0001", "body_site": "axillary lymph node", "note": "left side", **fields}
    data["files"] = files
    return client.post(reverse("case_new"), data)


def _upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


def test_clinician_creates_case_with_png_jpeg_tiff_and_jobs_are_queued_after_commit(
    clinician, django_capture_on_commit_callbacks
):
    client = login(clinician)
    files = [
        _upload("a.png", image_bytes("PNG")),
        _upload("b.jpg", image_bytes("JPEG", color=(10, 20, 30))),
        _upload("c.tiff", image_bytes("TIFF", color=(90, 20, 30))),
    ]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post_case(client, files)
    assert response.status_code == 302
    case = Case.objects.get()
    assert response["Location"] == reverse("case_detail", args=[case.uuid])
    scans = list(case.scans.order_by("original_name"))
    assert [s.format for s in scans] == ["PNG", "JPEG", "TIFF"]
    assert all(s.job.status == InferenceJob.Status.QUEUED for s in scans)
    # One enqueue per scan, registered to run only after the transaction commits (the
    # other callbacks tell the unit's worklists that something changed).
    assert len([c for c in callbacks if "job_enqueue" in c.__qualname__]) == 3
    assert stored_files() >= {s.storage_name for s in scans}
    assert AuditEvent.objects.filter(action="scan.upload").count() == 3
    page = client.get(reverse("case_detail", args=[case.uuid]))
    assert b"Queued" in page.content


def test_enqueue_reaches_the_real_redis_broker(clinician, django_capture_on_commit_callbacks):
    import redis
    from django.conf import settings

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("inference")
    client = login(clinician)
    with django_capture_on_commit_callbacks(execute=True):
        response = _post_case(client, [_upload("a.png", image_bytes("PNG"))])
    assert response.status_code == 302
    assert broker.llen("inference") == 1
    message = broker.lpop("inference")
    assert str(Scan.objects.get().job.id).encode() in message
    assert b"PSN-0001" not in message  # ids only, never patient data


def test_repeated_upload_of_same_bytes_is_recognised(clinician):
    client = login(clinician)
    data = sample_bytes()
    assert _post_case(client, [_upload("x.jpg", data)]).status_code == 302
    case = Case.objects.get()
    response = client.post(reverse("case_upload", args=[case.uuid]), {"files": [_upload("again.jpg", data)]})
    assert response.status_code == 302
    assert case.scans.count() == 1
    follow = client.get(response["Location"])
    assert b"already uploaded to this case" in follow.content


def _truncated_png() -> bytes:
    data = image_bytes("PNG", size=(300, 300))
    return data[: len(data) // 2]


def _big_png() -> bytes:
    img = Image.new("L", (2000, 1500))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


BAD_INPUTS = [
    ("empty.png", b"", "empty.png: the file is empty"),
    ("notes.png", b"patient: someone\nthis is text, not an image\n", "not an accepted image type"),
    ("report.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\n", "not an accepted image type"),
    ("half.png", _truncated_png(), "damaged or truncated"),
    ("photo.png", image_bytes("JPEG"), "the file name says .png but the content is JPEG"),
    ("scan.exe", image_bytes("PNG"), "the file name says .exe but the content is PNG"),
    ("huge.png", _big_png(), "pixels; the limit is 1,000,000"),
]


@pytest.mark.parametrize(("name", "data", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_a_message_and_leaves_nothing(clinician, settings, name, data, message):
    settings.UPLOAD_MAX_PIXELS = 1_000_000
    before = stored_files()
    client = login(clinician)
    response = _post_case(client, [_upload(name, data)])
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Case.objects.count() == 0
    assert Scan.objects.count() == 0
    assert InferenceJob.objects.count() == 0
    assert stored_files() == before


def test_file_over_the_byte_cap_is_refused(clinician, settings):
    settings.UPLOAD_MAX_BYTES = 1000
    client = login(clinician)
    response = _post_case(client, [_upload("a.png", image_bytes("PNG", size=(400, 400)))])
    assert response.status_code == 400
    assert "the limit is 1,000 bytes" in response.content.decode()
    assert Scan.objects.count() == 0


def test_no_file_at_all_is_refused(clinician):
    client = login(clinician)
    response = client.post(reverse("case_new"), {"patient_ref": "PSN-1", "body_site": "breast"})
    assert response.status_code == 400
    assert "Choose at least one image" in response.content.decode()
    assert Case.objects.count() == 0


def test_one_bad_file_in_a_batch_stores_nothing_and_names_the_file(clinician):
    before = stored_files()
    client = login(clinician)
    response = _post_case(client, [_upload("good.png", image_bytes("PNG")), _upload("bad.png", b"GIF89a....")])
    assert response.status_code == 400
    body = response.content.decode()
    assert "bad.png: the content is not an accepted image type" in body
    assert "Nothing was stored" in body
    assert Case.objects.count() == 0
    assert Scan.objects.count() == 0
    assert stored_files() == before


def test_patient_reference_must_be_pseudonymous_shape(clinician):
    client = login(clinician)
    response = _post_case(client, [_upload("a.png", image_bytes())], patient_ref="Jane Doe 1970-01-01")
    assert response.status_code == 400
    assert "pseudonymous reference" in response.content.decode()
    assert Case.objects.count() == 0


def test_upload_to_existing_case_with_bad_file_leaves_case_unchanged(clinician):
    client = login(clinician)
    assert _post_case(client, [_upload("a.png", image_bytes())]).status_code == 302
    case = Case.objects.get()
    before = stored_files()
    response = client.post(reverse("case_upload", args=[case.uuid]), {"files": [_upload("b.jpg", b"\xff\xd8\xff")]})
    assert response.status_code == 400
    assert "damaged or truncated" in response.content.decode()
    assert case.scans.count() == 1
    assert stored_files() == before


def test_the_site_pseudonym_pattern_is_obeyed_by_page_api_and_dicom_upload(clinician, settings):
    from diagnostics.services.cases import IncomingFile, case_create
    from tests.diagnostics_tests.dicom_factory import dicom_bytes
    from tests.helpers import api

    # The default refuses a name typed as a reference, naming the rule.
    page = _post_case(login(clinician), [_upload("a.png", image_bytes())], patient_ref="Smith_John")
    assert page.status_code == 400
    assert settings.PSEUDONYM_PATTERN in page.content.decode().replace("&#x27;", "'")
    assert "never a name" in page.content.decode()
    answer = api(clinician).post("/api/v1/cases/", {"patient_ref": "Smith_John", "body_site": "skin"}, format="json")
    assert answer.status_code == 400
    error = answer.json()["error"]["fields"]["patient_ref"][0]
    assert error["code"] == "invalid_patient_ref" and settings.PSEUDONYM_PATTERN in error["message"]
    # A site's own scheme: only HOSP- and eight digits.
    settings.PSEUDONYM_PATTERN = r"HOSP-[0-9]{8}"
    dicom = IncomingFile(name="ct.dcm", data=dicom_bytes())
    with pytest.raises(ValidationError, match=r"HOSP-\[0-9\]\{8\}"):
        case_create(acting_user=clinician, patient_ref="PSN-0001", body_site="chest", files=[dicom])
    assert Case.objects.count() == 0 and stored_files() == set()
    ok = api(clinician).post("/api/v1/cases/", {"patient_ref": "HOSP-00000042", "body_site": "skin"}, format="json")
    assert ok.status_code == 201, ok.content
    assert _post_case(login(clinician), [_upload("a.png", image_bytes())], patient_ref="HOSP-0042").status_code == 400


def _raw_multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    # Built by hand: Django's test client shortens file names to 255 characters.
    boundary = "cwboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_an_overlong_file_name_gets_a_message_naming_it_on_every_upload_door(clinician):
    from diagnostics.services.cases import IncomingFile, UploadBatchRejected, case_create, scans_upload
    from tests.helpers import api

    case = case_create(acting_user=clinician, patient_ref="PSN-9", body_site="skin")
    browser, machine = login(clinician), api(clinician)
    thousand = "a" * 996 + ".png"
    body, content_type = _raw_multipart(thousand, image_bytes())
    # The upload page's per-file endpoint (what the drop zone sends).
    page = browser.post(reverse("case_upload_file", args=[case.uuid]), body, content_type=content_type)
    assert page.status_code == 400
    assert page.json()["errors"][0]["code"] == "file_name_too_long"
    assert "file name is too long" in page.json()["errors"][0]["message"]
    # The case page's form.
    form = browser.post(reverse("case_upload", args=[case.uuid]), body, content_type=content_type)
    assert form.status_code == 400 and "file name is too long" in form.content.decode()
    # The API.
    answer = machine.post(reverse("api_case_scans", args=[case.uuid]), body, content_type=content_type)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "file_name_too_long"
    # Django shortens names up to the header limit to 255 characters on the way in; a
    # door that hands the service a longer name gets its length named.
    with pytest.raises(UploadBatchRejected) as refused:
        scans_upload(
            acting_user=clinician, case=case, files=[IncomingFile(name="b" * 400 + ".png", data=image_bytes())]
        )
    [(_, error)] = refused.value.errors
    assert error.code == "file_name_too_long" and "404 characters; at most 255" in error.message
    # Same class: a form field over Django's memory limit is named too, not a bare 400.
    big = {"note": "x" * (3 * 1024 * 1024), "files": [SimpleUploadedFile("a.png", image_bytes())]}
    too_big = machine.post(reverse("api_case_scans", args=[case.uuid]), big, format="multipart")
    assert too_big.status_code == 400 and too_big.json()["error"]["code"] == "request_too_large"
    page_big = browser.post(reverse("case_upload_file", args=[case.uuid]), big)
    assert page_big.status_code == 400 and page_big.json()["errors"][0]["code"] == "request_too_large"
    assert not case.scans.exists() and stored_files() == set()
