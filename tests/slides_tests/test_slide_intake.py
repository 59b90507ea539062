"""Whole-slide intake through the tus API as a client would use it: create, PATCH in
chunks, resume after a lost request, finish with the SHA-256; then the check that makes
it a Scan or refuses it with a clear message, storing nothing. Bad inputs of the issue,
label removal, and who may see uploads and tiles."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from django.urls import reverse

from accounts.models import AuditEvent
from diagnostics.intake import storage
from diagnostics.models import Scan, SlideUpload
from diagnostics.services.slides import UploadProblem, slide_upload_append, slide_upload_process, slide_uploads_sweep
from tests.factories import make_case
from tests.helpers import api, login, stored_files
from tests.slides_tests import slide_factory as f

pytestmark = pytest.mark.django_db
TUS = {"HTTP_TUS_RESUMABLE": "1.0.0"}


def _meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _create(client, case, name: str, length: int, **meta: str):  # type: ignore[no-untyped-def]
    return client.generic(
        "POST",
        reverse("api_case_slide_uploads", args=[case.uuid]),
        b"",
        HTTP_UPLOAD_LENGTH=str(length),
        HTTP_UPLOAD_METADATA=_meta(filename=name, **meta),
        **TUS,
    )


def _patch(client, url: str, offset: int, data: bytes):  # type: ignore[no-untyped-def]
    return client.generic(
        "PATCH", url, data, content_type="application/offset+octet-stream", HTTP_UPLOAD_OFFSET=str(offset), **TUS
    )


def _upload(client, case, path: Path, *, name: str | None = None, chunk: int = 256 * 1024, **meta: str):  # type: ignore[no-untyped-def]
    """Send the file as tus-js-client would and finish it; returns the upload's URL."""
    data = path.read_bytes()
    created = _create(client, case, name or path.name, len(data), **meta)
    assert created.status_code == 201, created.content
    url = created["Location"]
    offset = 0
    while offset < len(data):
        answer = _patch(client, url, offset, data[offset : offset + chunk])
        assert answer.status_code == 204, answer.content
        offset = int(answer["Upload-Offset"])
    finished = client.post(url + "finish/", {"sha256": hashlib.sha256(data).hexdigest()}, format="json")
    assert finished.status_code == 202, finished.content
    return url


def _process(url: str) -> SlideUpload:
    upload = SlideUpload.objects.get(uuid=url.rstrip("/").rsplit("/", 1)[-1])
    slide_upload_process(upload_id=upload.id)
    upload.refresh_from_db()
    return upload


@pytest.fixture
def case(clinician, active_model):  # type: ignore[no-untyped-def]
    return make_case(clinician, n_files=0)


def test_a_slide_uploaded_in_chunks_resumes_after_a_lost_request_and_becomes_a_scan(
    clinician, case, settings, tmp_path, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    settings.SLIDE_CHUNK_BYTES = 256 * 1024
    client = api(clinician)
    path = f.generic_tiff(tmp_path / "slide.tiff")
    data = path.read_bytes()
    created = _create(client, case, "slide.tiff", len(data))
    assert created.status_code == 201, created.content
    url = created["Location"]
    assert _patch(client, url, 0, data[: 256 * 1024]).status_code == 204
    # A request cut off by a dropped connection stores nothing; the client asks where to resume.
    upload = SlideUpload.objects.get()
    with pytest.raises(UploadProblem) as cut:
        slide_upload_append(
            acting_user=clinician, upload=upload, offset=256 * 1024, data=data[256 * 1024 : 300 * 1024],
            declared_length=256 * 1024,
        )  # fmt: skip
    assert cut.value.code == "upload_interrupted"
    head = client.head(url, **TUS)
    assert (
        head.status_code == 200 and head["Upload-Offset"] == str(256 * 1024) and head["Upload-Length"] == str(len(data))
    )
    # Sending from the wrong offset is a conflict, as tus says.
    assert _patch(client, url, 0, data[:10]).status_code == 409
    offset = 256 * 1024
    while offset < len(data):
        offset = int(_patch(client, url, offset, data[offset : offset + 256 * 1024])["Upload-Offset"])
    # Nobody sees an unfinished upload: not even a colleague of the same unit.
    assert Scan.objects.count() == 0
    with django_capture_on_commit_callbacks(execute=False):
        assert (
            client.post(url + "finish/", {"sha256": hashlib.sha256(data).hexdigest()}, format="json").status_code == 202
        )
    upload = _process(url)
    assert upload.status == "accepted", upload.error
    scan = upload.scan
    assert scan.kind == "slide" and (scan.width, scan.height) == (1024, 768) and scan.mpp_x == pytest.approx(0.5)
    # Stored in encrypted chunks: reassembled, it is the file that was sent.
    chunks = b"".join(storage.iter_chunks(scan.storage_name, storage.chunk_count(scan.size_bytes, scan.chunk_bytes)))
    assert hashlib.sha256(chunks).hexdigest() == scan.sha256 == scan.received_sha256 == hashlib.sha256(data).hexdigest()
    raw = storage.read_raw(storage.chunk_name(scan.storage_name, 0))
    assert raw.startswith(storage.MAGIC) and data[:64] not in raw
    assert scan.job.status == "queued"
    # The upload's own chunks are gone once the slide is stored.
    assert not any(name.startswith("uploads/") for name in stored_files())
    status = client.get(url).json()
    assert status["status"] == "accepted" and status["scan"] == str(scan.uuid) and status["job"] == str(scan.job.uuid)


def test_a_different_sha256_refuses_the_slide_and_stores_nothing(clinician, case, tmp_path, settings):  # type: ignore[no-untyped-def]
    client = api(clinician)
    path = f.generic_tiff(tmp_path / "slide.tiff")
    data = path.read_bytes()
    url = _create(client, case, "slide.tiff", len(data))["Location"]
    _patch(client, url, 0, data[: settings.SLIDE_CHUNK_BYTES])
    client.post(url + "finish/", {"sha256": "0" * 64}, format="json")
    upload = _process(url)
    assert upload.status == "refused" and upload.error_code == "checksum_mismatch"
    assert Scan.objects.count() == 0 and stored_files() == set()


BAD_INPUTS = [
    ("truncated", f.truncated, "slide.tiff", "truncated_slide", "truncated"),
    ("not tiled", f.not_tiled, "slide.tiff", "slide_not_tiled", "not tiled"),
    ("lying levels", f.lying_levels, "slide.tiff", "slide_levels_inconsistent", "do not match their declared sizes"),
    ("10^6 x 10^6", f.huge, "slide.tiff", "too_many_pixels", "1,000,000 x 1,000,000"),
    ("mrxs content under a tiff name", f.mrxs_index, "slide.tiff", "slide_multi_file", "data folder"),
    ("generic TIFF renamed .svs", f.generic_tiff, "slide.svs", "extension_mismatch", "the file name says .svs"),
    ("PNG renamed .svs", None, "photo.svs", "extension_mismatch", "PNG picture"),
    ("no resolution", lambda p: f.generic_tiff(p, mpp=None), "slide.tiff", "slide_no_resolution", "micrometres"),
]


@pytest.mark.parametrize(("what", "make", "name", "code", "words"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_slides_are_refused_with_a_clear_message_and_nothing_is_stored(
    clinician, case, tmp_path, what, make, name, code, words
):  # type: ignore[no-untyped-def]
    client = api(clinician)
    path = tmp_path / "input.bin"
    if make is None:
        path.write_bytes(f.png_bytes())
    else:
        make(path)
    upload = _process(_upload(client, case, path, name=name))
    assert upload.status == "refused"
    assert upload.error_code == code and words in upload.error, upload.error
    assert Scan.objects.count() == 0 and stored_files() == set()
    assert AuditEvent.objects.filter(action="slide_upload.refuse").exists()


def test_a_slide_without_resolution_is_accepted_when_the_user_states_one(clinician, case, tmp_path):  # type: ignore[no-untyped-def]
    upload = _process(_upload(api(clinician), case, f.generic_tiff(tmp_path / "s.tiff", mpp=None), mpp="0.25"))
    assert upload.status == "accepted" and upload.scan.mpp_x == 0.25
    assert upload.scan.slide_info["mpp_source"] == "stated"


def test_an_mrxs_and_an_oversized_file_are_refused_before_any_byte_is_sent(clinician, case, settings):  # type: ignore[no-untyped-def]
    client = api(clinician)
    answer = _create(client, case, "slide.mrxs", 1000)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "slide_multi_file"
    assert "data files" in answer.json()["error"]["message"]
    answer = _create(client, case, "slide.svs", settings.SLIDE_UPLOAD_MAX_BYTES + 1)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "file_too_large"
    # A name longer than any file system keeps: the refusal says so.
    answer = _create(client, case, "s" * 996 + ".svs", 1000)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "file_name_too_long"
    assert "1000 characters; at most 255" in answer.json()["error"]["message"]
    assert SlideUpload.objects.count() == 0


def test_the_label_and_macro_are_removed_from_the_stored_copy_and_audited(clinician, case, tmp_path):  # type: ignore[no-untyped-def]
    import openslide

    path = f.aperio_svs(tmp_path / "case.svs")
    upload = _process(_upload(api(clinician), case, path))
    assert upload.status == "accepted", upload.error
    scan = upload.scan
    assert scan.slide_info["associated_removed"] == ["label", "macro"]
    assert scan.sha256 != scan.received_sha256  # the stored copy is the anonymised one
    stored = b"".join(storage.iter_chunks(scan.storage_name, storage.chunk_count(scan.size_bytes, scan.chunk_bytes)))
    copy = tmp_path / "stored.svs"
    copy.write_bytes(stored)
    slide = openslide.OpenSlide(str(copy))
    assert set(slide.associated_images) == {"thumbnail"}
    assert bytes(f.LABEL_RGB) * 8 not in stored  # the label's pixels are overwritten, not only unlinked
    event = AuditEvent.objects.get(action="slide.anonymise", object_id=str(scan.uuid))
    assert event.data["removed"] == ["label", "macro"]


def test_uploads_are_their_uploaders_alone_and_expired_ones_are_deleted(
    clinician, case, other_unit_clinician, care_unit, tmp_path
):  # type: ignore[no-untyped-def]
    from tests.factories import UserFactory

    colleague = UserFactory(username="colleague", role="clinician", units=[care_unit])
    client = api(clinician)
    data = f.generic_tiff(tmp_path / "s.tiff").read_bytes()
    url = _create(client, case, "s.tiff", len(data))["Location"]
    _patch(client, url, 0, data[:1000])
    for other in (colleague, other_unit_clinician):
        assert api(other).head(url, **TUS).status_code == 404
        assert api(other).get(url).status_code == 404
        assert _patch(api(other), url, 1000, data[1000:2000]).status_code == 404
    assert any(name.startswith("uploads/") for name in stored_files())
    from datetime import timedelta

    from django.utils import timezone

    assert slide_uploads_sweep(now=timezone.now() + timedelta(days=2))["expired"] == 1
    assert SlideUpload.objects.count() == 0 and stored_files() == set()
    assert AuditEvent.objects.filter(action="slide_upload.expire").exists()


def test_a_foreign_user_gets_404_on_every_slide_url(
    clinician, case, other_unit_clinician, other_unit_physician, outsider, tmp_path
):  # type: ignore[no-untyped-def]
    scan = _process(_upload(api(clinician), case, f.generic_tiff(tmp_path / "s.tiff"))).scan
    own = login(clinician)
    dzi = reverse("slide_dzi", args=[scan.uuid])
    answer = own.get(dzi)
    assert answer.status_code == 200 and b"<Image" in answer.content
    levels = 11  # Deep Zoom levels of a 1024 px slide: 0..10
    urls = [dzi, reverse("scan_image", args=[scan.uuid])] + [
        reverse("slide_tile", args=[scan.uuid, level, 0, 0]) for level in range(levels)
    ]
    for url in urls[1:]:
        assert own.get(url).status_code == 200, url
    for stranger in (other_unit_clinician, other_unit_physician, outsider):
        client = login(stranger)
        for url in urls:
            assert client.get(url).status_code == 404, (stranger.username, url)
    # A tile outside the pyramid is 404 too, and the label has no URL at all.
    assert own.get(reverse("slide_tile", args=[scan.uuid, 10, 99, 99])).status_code == 404
