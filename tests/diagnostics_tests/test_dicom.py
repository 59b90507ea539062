"""DICOM uploads: accepted through the form, de-identified before storage, rendered
with the modality rescale and window, predicted on by the worker's service."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from diagnostics.intake import dicom, imaging, storage
from diagnostics.intake.validation import UploadRejected, validate_image
from diagnostics.models import Case, InferenceJob, Prediction, Scan
from diagnostics.services.jobs import job_run
from tests.diagnostics_tests.dicom_factory import IDENTIFYING, ct_pixels, dicom_bytes
from tests.diagnostics_tests.dicom_profile import ANNEX_E_BASIC_PROFILE
from tests.helpers import login, stored_files

pytestmark = pytest.mark.django_db

LIMITS = {"max_bytes": 50 * 1024 * 1024, "max_pixels": 60_000_000}


def _post_case(client, name: str, data: bytes, ref: str = "PSN-0042"):  # type: ignore[no-untyped-def]
    upload = SimpleUploadedFile(name, data, content_type="application/dicom")
    return client.post(reverse("case_new"), {"patient_ref": ref, "body_site": "chest", "files": [upload]})


def _stored_dataset(scan: Scan) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(storage.read_bytes(scan.storage_name)))


@pytest.mark.parametrize("name", ["chest.dcm", "chest.DICOM", "IM000001"])
def test_dicom_upload_is_stored_de_identified_with_only_the_case_reference(clinician, name):
    original = dicom_bytes()
    response = _post_case(login(clinician), name, original)
    assert response.status_code == 302
    scan = Case.objects.get().scans.get()
    assert (scan.format, scan.width, scan.height) == ("DICOM", 48, 64)
    plain = storage.read_bytes(scan.storage_name)
    assert scan.sha256 == storage.sha256_bytes(plain) != storage.sha256_bytes(original)
    assert scan.size_bytes == len(plain)
    for value in IDENTIFYING.values():
        assert value.encode() not in plain
    assert b"ACME SCANNER" not in plain and b"Jane Smith" not in plain
    ds = _stored_dataset(scan)
    assert ds.PatientName == "PSN-0042" and ds.PatientID == "PSN-0042"
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    original_ds = pydicom.dcmread(io.BytesIO(original))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds.get(keyword) and ds.get(keyword) != original_ds.get(keyword)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "FrameOfReferenceUID" not in ds
    assert not any(el.tag.is_private for el in ds.iterall())
    assert np.array_equal(ds.pixel_array, original_ds.pixel_array)  # the pixels are untouched


def test_same_dicom_uploaded_again_is_recognised_as_a_repeat(clinician):
    data = dicom_bytes()
    client = login(clinician)
    assert _post_case(client, "a.dcm", data).status_code == 302
    case = Case.objects.get()
    upload = SimpleUploadedFile("again.dcm", data)
    response = client.post(reverse("case_upload", args=[case.uuid]), {"files": [upload]})
    assert response.status_code == 302
    assert case.scans.count() == 1  # keyed UID replacement is stable, so the bytes match


def _fill(ds: Dataset, keyword: str) -> None:
    """Put a recognisable, identifying-looking value in any attribute."""
    vr = dictionary_VR(keyword_dict[keyword])
    marker = "IDENTIFYING"
    values: dict[str, object] = {
        "PN": "Marker^Identifying",
        "DA": "19520314",
        "DT": "19520314120000",
        "TM": "120000",
        "UI": generate_uid(),
        "AS": "072Y",
        "DS": "71.5",
        "IS": "7",
        "US": 7,
        "UL": 7,
        "SS": 7,
        "SL": 7,
        "FD": 7.0,
        "FL": 7.0,
        "CS": "MARKER",
        "AT": 0x00100010,
    }
    if vr == "SQ":
        item = Dataset()
        item.PatientName = "Marker^Identifying"
        setattr(ds, keyword, Sequence([item]))
    elif vr in values:
        setattr(ds, keyword, values[vr])
    elif vr in ("OB", "OW", "UN", "OB or OW", "OD", "OF", "OL", "OV"):
        ds.add_new(keyword_dict[keyword], "OB", marker.encode() + b"\x00")
    elif " or " in vr:
        ds.add_new(keyword_dict[keyword], vr.split(" or ")[0], 7)
    else:
        setattr(ds, keyword, marker)


def test_output_holds_none_of_the_attributes_the_basic_profile_removes(settings):
    """Every attribute of PS3.15 Table E.1-1 (basic profile) set in the input; none
    survives except Patient Name/ID (the pseudonym) and the replaced UIDs."""
    source = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    # Command (0000) and file meta (0002) elements cannot appear in a data set.
    profile = sorted(kw for kw in ANNEX_E_BASIC_PROFILE if keyword_dict[kw] >> 16 not in (0x0000, 0x0002))
    assert len(profile) > 200
    originals = {}
    for keyword in profile:
        _fill(source, keyword)
        originals[keyword] = source.get(keyword)
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    out = dicom.deidentify(buffer.getvalue(), pseudonym="PSN-7", uid_secret=b"secret")
    ds = pydicom.dcmread(io.BytesIO(out))
    replaced = {"PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}
    kept_from_profile = {kw for kw in profile if kw in ds} - replaced
    assert kept_from_profile == set()
    assert ds.PatientName == ds.PatientID == "PSN-7"
    for keyword in replaced - {"PatientName", "PatientID"}:
        assert str(ds.get(keyword)).startswith("2.25.") and ds.get(keyword) != originals[keyword]
    assert b"IDENTIFYING" not in out and b"Marker" not in out and b"19520314" not in out
    # Nothing else that could identify: only the allowlist plus the de-identification record.
    added = {
        "PatientName",
        "PatientID",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
        "LongitudinalTemporalInformationModified",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    }
    assert {el.keyword for el in ds} <= dicom.KEPT_KEYWORDS | added
    assert not dicom.KEPT_KEYWORDS & ANNEX_E_BASIC_PROFILE


def test_executable_in_the_preamble_is_refused_and_the_stored_preamble_is_zeroed():
    with pytest.raises(UploadRejected) as err:
        validate_image(data=dicom_bytes(preamble=b"MZ" + b"\x90" * 126), filename="a.dcm", **LIMITS)
    assert err.value.code == "dicom_executable_preamble"
    # PS3.10 allows other preambles (e.g. TIFF dual-personality); they are accepted,
    # but the stored copy never carries them.
    tiff_preamble = b"II*\x00" + b"\x00" * 124
    data = dicom_bytes(preamble=tiff_preamble)
    assert validate_image(data=data, filename="a.dcm", **LIMITS).format == "DICOM"
    assert dicom.deidentify(data, pseudonym="P", uid_secret=b"k")[:128] == b"\x00" * 128


def test_rescale_and_window_drive_the_rendered_pixels():
    # Stored 0..1999 with intercept -1024: HU -1024..975. Window 40/400 shows -160..240 HU.
    rows, cols = 64, 48
    data = dicom_bytes(pixels=ct_pixels(rows, cols))
    grey = np.asarray(imaging.to_rgb_image(data))[..., 0].astype(int)
    stored = ct_pixels(rows, cols).astype(float)
    hu = stored - 1024
    assert (grey[hu <= -160.5 - 0.5] == 0).all()
    assert (grey[hu > 240] == 255).all()
    middle = (hu > -100) & (hu < 200)
    expected = np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)
    assert np.abs(grey[middle] - expected[middle]).max() <= 1


def test_without_a_window_the_full_range_is_used_and_monochrome1_is_inverted():
    pixels = np.linspace(0, 4000, 64 * 48).reshape(64, 48).astype(np.uint16)
    grey2 = np.asarray(imaging.to_rgb_image(dicom_bytes(pixels=pixels, window=None, rescale=None)))[..., 0]
    assert grey2.min() == 0 and grey2.max() == 255
    assert grey2[0, 0] == 0 and grey2[-1, -1] == 255
    grey1 = np.asarray(
        imaging.to_rgb_image(dicom_bytes(pixels=pixels, window=None, rescale=None, photometric="MONOCHROME1"))
    )[..., 0]
    assert grey1[0, 0] == 255 and grey1[-1, -1] == 0


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless], ids=["implicit", "bigendian", "rle"]
)
def test_supported_transfer_syntaxes_render_the_same_pixels(syntax):
    reference = np.asarray(imaging.to_rgb_image(dicom_bytes()))
    data = dicom_bytes(transfer_syntax=syntax)
    assert validate_image(data=data, filename="x.dcm", **LIMITS).format == "DICOM"
    stored = dicom.deidentify(data, pseudonym="P", uid_secret=b"k")
    assert np.array_equal(np.asarray(imaging.to_rgb_image(stored)), reference)


def test_baseline_jpeg_dicom_is_accepted():
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[:, :30] = (200, 30, 30)
    data = dicom_bytes(pixels=rgb, transfer_syntax=JPEGBaseline8Bit, window=None, rescale=None)
    info = validate_image(data=data, filename="x.dcm", **LIMITS)
    assert (info.format, info.width, info.height) == ("DICOM", 60, 40)
    red = np.asarray(imaging.to_rgb_image(data))[20, 10]
    assert red[0] > 150 and red[1] < 80


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (dicom_bytes(with_pixels=False), "dicom_no_pixel_data", "holds no image pixel data"),
        (dicom_bytes(transfer_syntax=JPEG2000Lossless, pixel_bytes=encapsulate([b"\x00" * 64])),
         "dicom_unsupported_transfer_syntax", "JPEG 2000"),
        (dicom_bytes(transfer_syntax=DeflatedExplicitVRLittleEndian), "dicom_unsupported_transfer_syntax",
         "Deflated"),
        (dicom_bytes(frames=30_000), "too_many_pixels", "the limit is 60,000,000"),
        (dicom_bytes()[:-100], "corrupt_image", "pixel data is truncated"),
        (dicom_bytes(preamble=b"\x7fELF" + b"\x00" * 124), "dicom_executable_preamble", "Linux executable"),
    ],
    ids=["no-pixels", "jpeg2000", "deflated", "too-many-frames", "truncated", "elf-preamble"],
)  # fmt: skip
def test_bad_dicom_is_refused_with_a_named_reason(clinician, data, code, message):
    with pytest.raises(UploadRejected) as err:
        validate_image(data=data, filename="x.dcm", **LIMITS)
    assert err.value.code == code and message in err.value.message
    response = _post_case(login(clinician), "x.dcm", data)
    assert response.status_code == 400
    assert f"[{code}]" in response.content.decode()
    assert Scan.objects.count() == 0 and stored_files() == set()


def test_extension_rule_for_dicom():
    data = dicom_bytes()
    with pytest.raises(UploadRejected) as err:
        validate_image(data=data, filename="scan.png", **LIMITS)
    assert err.value.code == "extension_mismatch"
    # A PNG cannot hide behind a missing extension: only DICOM may come without one.
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(UploadRejected) as err:
        validate_image(data=png.getvalue(), filename="IM0001", **LIMITS)
    assert err.value.code == "extension_mismatch"


def test_burned_in_annotation_is_flagged_and_warned_on_the_review_page(clinician, physician, active_model):
    data = dicom_bytes(extra={"BurnedInAnnotation": "YES"})
    assert _post_case(login(clinician), "us.dcm", data).status_code == 302
    scan = Scan.objects.get()
    assert scan.burned_in_annotation is True
    job_run(job_id=scan.job.id)
    item = Prediction.objects.get(scan=scan).review_item
    page = login(physician).get(reverse("review_detail", args=[item.uuid]))
    assert page.status_code == 200
    assert "Burned-in annotation" in page.content.decode()


def test_review_page_has_no_warning_without_burned_in_annotation(clinician, physician, active_model):
    assert _post_case(login(clinician), "ct.dcm", dicom_bytes()).status_code == 302
    scan = Scan.objects.get()
    assert scan.burned_in_annotation is False
    job_run(job_id=scan.job.id)
    item = Prediction.objects.get(scan=scan).review_item
    page = login(physician).get(reverse("review_detail", args=[item.uuid]))
    assert "Burned-in annotation" not in page.content.decode()


def test_worker_service_predicts_on_dicom_and_the_page_shows_it_as_png(clinician, active_model):
    client = login(clinician)
    assert _post_case(client, "ct.dcm", dicom_bytes()).status_code == 302
    scan = Scan.objects.get()
    job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.SUCCEEDED, job.error
    prediction = Prediction.objects.get(scan=scan)
    assert prediction.input_sha256 == scan.sha256
    assert abs(sum(prediction.probabilities) - 1) < 1e-5
    image = client.get(reverse("scan_image", args=[scan.uuid]))
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(image.content)) as img:
        assert img.size == (48, 64)


def test_pydicom_sample_files_are_accepted_or_refused_never_crash():
    """pydicom's own test files (shipped with the package): each is accepted and
    renders, or is refused with one of our codes."""
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    files = sorted(folder.glob("*.dcm"))
    assert len(files) > 40
    accepted = 0
    for path in files:
        data = path.read_bytes()
        try:
            validate_image(data=data, filename=path.name, **LIMITS)
        except UploadRejected as exc:
            assert exc.code in {
                "unsupported_type",
                "corrupt_image",
                "dicom_no_pixel_data",
                "dicom_unsupported_transfer_syntax",
                "dicom_unsupported_pixels",
            }, (path.name, exc.code)
            continue
        stored = dicom.deidentify(data, pseudonym="P", uid_secret=b"k")
        assert imaging.decode_for_model(stored, size=96).shape == (96, 96, 3)
        accepted += 1
    assert accepted >= 20
