"""Hostile input: at least 100 generated files, every one refused with a clear 4xx
through the real upload form and through the service, nothing stored, and each
decided within 10 s under a memory cap (measured in forked children)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.models import AuditEvent
from diagnostics.models import Case, InferenceJob, Scan
from diagnostics.services.cases import IncomingFile, UploadBatchRejected, case_create
from tests.diagnostics_tests.hostile_corpus import build_corpus
from tests.helpers import login, stored_files

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
DECISION_LIMIT_S = 10.0
MEMORY_CAP_MIB = 1024  # address space a decision may add on top of the loaded validator
CODES = {
    "empty_file",
    "file_too_large",
    "unsupported_type",
    "extension_mismatch",
    "corrupt_image",
    "too_many_pixels",
    "dicom_executable_preamble",
    "dicom_no_pixel_data",
    "dicom_unsupported_transfer_syntax",
    "dicom_unsupported_pixels",
}


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str, bytes]]:
    return build_corpus(max_bytes=django_settings.UPLOAD_MAX_BYTES)


def _nothing_stored() -> None:
    assert Case.objects.count() == 0
    assert Scan.objects.count() == 0
    assert InferenceJob.objects.count() == 0
    assert not AuditEvent.objects.filter(action="scan.upload").exists()
    assert stored_files() == set()


def test_the_corpus_has_at_least_100_distinct_hostile_files(corpus):
    assert len(corpus) >= 100
    # Distinct files: the same bytes appear only under different (wrong) names.
    assert len({(name, data) for _, name, data in corpus}) == len(corpus)


def test_every_hostile_file_is_refused_through_the_upload_form(clinician, corpus, django_capture_on_commit_callbacks):
    client = login(clinician)
    failures = []
    slowest = (0.0, "")
    for label, name, data in corpus:
        started = time.perf_counter()
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = client.post(
                reverse("case_new"),
                {
                    "patient_ref": "PSN-0666",
                    "body_site": "chest",
                    "files": [SimpleUploadedFile(name, data, content_type="application/octet-stream")],
                },
            )
        elapsed = time.perf_counter() - started
        slowest = max(slowest, (elapsed, label))
        body = response.content.decode()
        codes = re.findall(r"\[([a-z_]+)\]", body)
        if (
            response.status_code != 400
            or len(codes) != 1
            or codes[0] not in CODES
            or f"{name}: " not in body
            or "Nothing was stored" not in body
            or callbacks
            or elapsed > DECISION_LIMIT_S
        ):
            failures.append((label, response.status_code, codes, round(elapsed, 2)))
    assert failures == []
    _nothing_stored()
    print(f"\nform: {len(corpus)} hostile files refused; slowest request {slowest[0]:.2f} s ({slowest[1]})")


def test_every_hostile_file_is_refused_by_the_service(clinician, corpus):
    failures = []
    for label, name, data in corpus:
        try:
            case_create(
                acting_user=clinician,
                patient_ref="PSN-0666",
                body_site="chest",
                files=[IncomingFile(name=name, data=data)],
            )
        except UploadBatchRejected as exc:
            [(_, error)] = exc.errors
            if error.code not in CODES or not error.message:
                failures.append((label, error.code))
        else:
            failures.append((label, "accepted"))
    assert failures == []
    _nothing_stored()


def test_each_decision_is_bounded_in_time_and_memory(corpus, tmp_path, capsys):
    manifest = []
    for index, (label, name, data) in enumerate(corpus):
        path = tmp_path / f"{index:03d}"
        path.write_bytes(data)
        manifest.append((label, name, str(path)))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.diagnostics_tests.hostile_probe",
            str(tmp_path / "manifest.json"),
            str(django_settings.UPLOAD_MAX_BYTES),
            str(django_settings.UPLOAD_MAX_PIXELS),
            str(MEMORY_CAP_MIB),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    baseline_kb = lines[0]["baseline_rss_kb"]
    decisions = lines[1:]
    assert [d["label"] for d in decisions] == [label for label, _, _ in corpus]
    refused = [d for d in decisions if d["outcome"] == "refused"]
    crashes = [d for d in decisions if d["outcome"] == "crash"]
    accepted = [d for d in decisions if d["outcome"] == "accepted"]
    slowest = max(decisions, key=lambda d: d["seconds"])
    heaviest = max(decisions, key=lambda d: d["max_rss_kb"])
    with capsys.disabled():
        print(
            f"\nhostile corpus: {len(decisions)} files, {len(refused)} refused, {len(accepted)} accepted, "
            f"{len(crashes)} crashes; slowest decision {slowest['seconds']:.3f} s ({slowest['label']}); "
            f"peak memory {heaviest['max_rss_kb'] / 1024:.0f} MiB RSS ({heaviest['label']}), "
            f"validator loaded {baseline_kb / 1024:.0f} MiB, cap +{MEMORY_CAP_MIB} MiB address space"
        )
        by_code: dict[str, int] = {}
        for d in refused:
            by_code[d["code"]] = by_code.get(d["code"], 0) + 1
        print("refusals by code: " + ", ".join(f"{code} {n}" for code, n in sorted(by_code.items())))
    assert crashes == []
    assert accepted == []
    assert len(refused) == len(corpus) >= 100
    assert all(d["code"] in CODES and d["message"] for d in refused)
    assert slowest["seconds"] < DECISION_LIMIT_S


def test_seeded_mutation_fuzz_never_escapes_the_validator(capsys):
    """1,500 random byte mutations of valid PNG, JPEG, TIFF and DICOM files (seeded, so
    reproducible): each is refused with UploadRejected or, when accepted, de-identifies
    (DICOM) and decodes for the model. Any other exception would be a 500 or a failed job."""
    import random

    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    from diagnostics.intake import dicom, imaging
    from diagnostics.intake.validation import UploadRejected, validate_image
    from tests.diagnostics_tests.dicom_factory import dicom_bytes
    from tests.helpers import image_bytes

    bases = [
        ("a.png", image_bytes("PNG", size=(40, 40))),
        ("a.jpg", image_bytes("JPEG", size=(40, 40))),
        ("a.tif", image_bytes("TIFF", size=(40, 40))),
        ("a.dcm", dicom_bytes()),
        ("b.dcm", dicom_bytes(transfer_syntax=RLELossless)),
        ("c.dcm", dicom_bytes(transfer_syntax=ImplicitVRLittleEndian)),
    ]
    rng = random.Random(20261126)
    escapes = []
    accepted = 0
    for _ in range(1500):
        name, base = rng.choice(bases)
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.6:
                data[pos] = rng.randrange(256)
            elif op < 0.8:
                del data[pos : pos + rng.randint(1, 64)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        mutated = bytes(data)
        try:
            info = validate_image(data=mutated, filename=name, max_bytes=10_000_000, max_pixels=1_000_000)
        except UploadRejected:
            continue
        except Exception as exc:
            escapes.append(("validate", name, type(exc).__name__))
            continue
        accepted += 1
        try:
            stored = mutated
            if info.format == "DICOM":
                stored = dicom.deidentify(mutated, pseudonym="PSN-1", uid_secret=b"k")
                dicom.check(stored, max_pixels=1_000_000)  # as the upload service does
            assert imaging.decode_for_model(stored, size=96).shape == (96, 96, 3)
        except dicom.DicomRejected:
            continue  # refused by the service's second check: still a 400, nothing stored
        except Exception as exc:
            escapes.append(("after-accept", name, type(exc).__name__))
    with capsys.disabled():
        print(f"\nmutation fuzz: 1500 files, {accepted} accepted and decoded, {len(escapes)} escapes")
    assert escapes == []
