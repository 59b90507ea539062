"""Encryption at rest: stored objects are AES-256-GCM blobs with a key id; a key
rotation command re-encrypts them; the content address stays the plaintext hash."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from PIL import Image, UnidentifiedImageError

from cancerweb.env import generate_key_entry, parse_key_entries
from diagnostics.intake import storage
from diagnostics.intake.encryption import MAGIC, EncryptionError
from diagnostics.models import InferenceJob
from diagnostics.services.cases import IncomingFile, case_create
from diagnostics.services.jobs import job_run
from tests.diagnostics_tests.dicom_factory import dicom_bytes
from tests.factories import make_scan
from tests.helpers import image_bytes, stored_files

pytestmark = [pytest.mark.django_db, pytest.mark.storage]
ROOT = Path(__file__).resolve().parents[2]


def _add_key(settings, key_id: str) -> None:  # type: ignore[no-untyped-def]
    new = parse_key_entries(generate_key_entry(key_id))[0]
    settings.ENCRYPTION_KEYS = [new, *settings.ENCRYPTION_KEYS]


def test_stored_scan_is_ciphertext_that_pillow_cannot_open(clinician):
    scan = make_scan(clinician)
    raw = storage.read_raw(scan.storage_name)
    plain = storage.read_bytes(scan.storage_name)
    assert raw.startswith(MAGIC) and plain.startswith(b"\x89PNG")
    assert plain not in raw and plain[:64] not in raw
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(storage.read_raw(scan.storage_name)))
    # The address is the hash of the plaintext, so the worker's check still holds.
    assert scan.sha256 == storage.sha256_bytes(plain) == scan.storage_name.rsplit("/", 1)[-1]


def test_stored_dicom_is_ciphertext_too(clinician):
    case = case_create(
        acting_user=clinician,
        patient_ref="PSN-9",
        body_site="chest",
        files=[IncomingFile(name="ct.dcm", data=dicom_bytes())],
    )
    raw = storage.read_raw(case.scans.get().storage_name)
    assert b"DICM" not in raw and b"PSN-9" not in raw


def test_each_blob_carries_the_current_key_id_and_a_fresh_nonce(clinician, settings):
    first = make_scan(clinician, ref="PSN-1")
    _add_key(settings, "k2")
    second = make_scan(clinician, color=(1, 2, 3), ref="PSN-2")
    from diagnostics.intake.encryption import blob_key_id

    assert blob_key_id(storage.read_raw(first.storage_name)) == "test1"
    assert blob_key_id(storage.read_raw(second.storage_name)) == "k2"
    # Both stay readable: every configured key decrypts.
    assert storage.read_bytes(first.storage_name).startswith(b"\x89PNG")


def test_altered_blob_fails_the_job_with_a_stated_reason(clinician, active_model):
    scan = make_scan(clinician)
    raw = bytearray(storage.read_raw(scan.storage_name))
    raw[-20] ^= 0x01
    storage.write_raw(scan.storage_name, bytes(raw))
    job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.FAILED
    assert "failed decryption" in job.error and "altered" in job.error


def test_validly_encrypted_wrong_content_fails_the_hash_check_after_decryption(clinician, active_model):
    from diagnostics.intake.encryption import encrypt

    scan = make_scan(clinician)
    other = image_bytes(color=(9, 9, 9))
    storage.write_raw(scan.storage_name, encrypt(other, keyring=storage.keyring(), name=scan.storage_name))
    job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.FAILED
    assert job.error == "stored scan bytes do not match their SHA-256"


def test_a_blob_moved_to_another_name_does_not_decrypt(clinician):
    a = make_scan(clinician, ref="PSN-1")
    b = make_scan(clinician, color=(1, 2, 3), ref="PSN-2")
    storage.write_raw(b.storage_name, storage.read_raw(a.storage_name))
    with pytest.raises(EncryptionError):
        storage.read_bytes(b.storage_name)


def test_unknown_key_id_is_a_clear_error(clinician, settings):
    scan = make_scan(clinician)
    _add_key(settings, "k2")
    settings.ENCRYPTION_KEYS = settings.ENCRYPTION_KEYS[:1]  # the old key was dropped too early
    with pytest.raises(EncryptionError, match="key 'test1', which is not configured"):
        storage.read_bytes(scan.storage_name)


def test_rotation_re_encrypts_everything_and_is_idempotent(clinician, settings):
    scans = [make_scan(clinician, color=(i, 50, 50), ref=f"PSN-{i}") for i in range(3)]
    plain = {s.storage_name: storage.read_bytes(s.storage_name) for s in scans}
    _add_key(settings, "k2")
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "3 re-encrypted, 0 already current" in out.getvalue()
    from diagnostics.intake.encryption import blob_key_id

    for name, data in plain.items():
        assert blob_key_id(storage.read_raw(name)) == "k2"
        assert storage.read_bytes(name) == data
    # The old key can now be removed.
    settings.ENCRYPTION_KEYS = settings.ENCRYPTION_KEYS[:1]
    assert all(storage.read_bytes(name) == data for name, data in plain.items())
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "0 re-encrypted, 3 already current" in out.getvalue()


def test_rotation_resumes_after_an_interruption(clinician, settings, monkeypatch):
    scans = [make_scan(clinician, color=(i, 60, 60), ref=f"PSN-{i}") for i in range(4)]
    plain = {s.storage_name: storage.read_bytes(s.storage_name) for s in scans}
    _add_key(settings, "k2")
    real_replace = storage._replace
    calls = {"n": 0}

    def crash_on_third(name: str, blob: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or a killed process
        real_replace(name, blob)

    monkeypatch.setattr(storage, "_replace", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        call_command("rotate_encryption_key", stdout=io.StringIO())
    monkeypatch.setattr(storage, "_replace", real_replace)
    # An object store's half-done copy, and a local temporary file, left behind by the crash.
    leftover = next(iter(plain))
    storage.scan_storage().save(leftover + storage.ROTATING_SUFFIX, io.BytesIO(storage.read_raw(leftover)))
    if not storage.is_object_store():  # a local rename's temporary file (object stores overwrite in one PUT)
        Path(storage.scan_storage().path(leftover)).with_name(".junk.partial").write_bytes(b"half written")
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "2 re-encrypted, 2 already current" in out.getvalue()
    assert stored_files() == set(plain)  # no leftovers
    for name, data in plain.items():
        assert storage.read_bytes(name) == data


def test_rotation_restores_an_object_whose_original_was_deleted_mid_swap(clinician, settings):
    scan = make_scan(clinician)
    data = storage.read_bytes(scan.storage_name)
    raw = storage.read_raw(scan.storage_name)
    # On an object store the swap is: save copy, delete original, save original, delete copy.
    storage.scan_storage().save(scan.storage_name + storage.ROTATING_SUFFIX, io.BytesIO(raw))
    storage.scan_storage().delete(scan.storage_name)
    _add_key(settings, "k2")
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "1 restored" in out.getvalue() and "1 re-encrypted" in out.getvalue()
    assert storage.read_bytes(scan.storage_name) == data
    assert stored_files() == {scan.storage_name}


def test_rotation_encrypts_objects_stored_before_encryption_existed(settings):
    data = image_bytes()
    name = storage.storage_name_for(storage.sha256_bytes(data))
    storage.scan_storage().save(name, io.BytesIO(data))
    with pytest.raises(EncryptionError):
        storage.read_bytes(name)  # plaintext is never served as if it were verified
    call_command("rotate_encryption_key", stdout=io.StringIO())
    assert storage.read_raw(name).startswith(MAGIC)
    assert storage.read_bytes(name) == data


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "no keys given"),
        ("nocolon", "must be written as id:base64key"),
        ("bad id!:" + "A" * 44, "invalid id"),
        ("k1:not base64!!", "not valid base64"),
        ("k1:" + "QUJD", "decodes to 3 bytes; AES-256 needs 32"),
        (generate_key_entry("k1") + "," + generate_key_entry("k1"), "appears twice"),
    ],
    ids=["empty", "no-colon", "bad-id", "not-base64", "short-key", "duplicate-id"],  # stable under xdist
)
def test_malformed_keys_are_refused(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_key_entries(raw)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "CANCERWEB_ENCRYPTION_KEYS must be set"),
        ("k1:QUJD", "CANCERWEB_ENCRYPTION_KEYS is malformed: key 'k1' decodes to 3 bytes"),
    ],
)
def test_start_up_refuses_a_missing_or_malformed_key(value, message):
    env = {k: v for k, v in os.environ.items() if k not in ("CANCERWEB_ENCRYPTION_KEYS", "CANCERWEB_DEMO")}
    if value is not None:
        env["CANCERWEB_ENCRYPTION_KEYS"] = value
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_rotation_on_an_installation_that_stored_nothing_yet(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "scans": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "never-created")},
        },
    }
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "0 re-encrypted, 0 already current" in out.getvalue()
