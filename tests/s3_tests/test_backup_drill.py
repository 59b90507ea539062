"""The backup drill: back up while clinicians upload and physicians sign, restore into
an empty database and an empty bucket, then check what a hospital would check: the
audit chain verifies, every signed decision's signature verifies, every scan and heat
map decrypts and matches its SHA-256. Each step is the documented command, run as its
own process the way an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import close_old_connections, connection

from diagnostics.models import ReviewDecision, Scan
from diagnostics.services.cases import IncomingFile, scans_upload
from tests.factories import CaseFactory, ReviewDecisionFactory, make_prediction, store_heatmap
from tests.helpers import ROOT, image_bytes

pytestmark = [pytest.mark.s3, pytest.mark.django_db(transaction=True)]


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def _db_url(name: str) -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"


def test_backup_under_load_restores_into_empty_services_and_verifies(
    s3_storage, s3_env, clinician, physician, active_model, tmp_path, capsys
):
    # Signed decisions with heat maps, before the backup.
    for i in range(4):
        prediction = make_prediction(clinician, active_model, [0.3, 0.7], color=(i, 30, 60), ref=f"PSN-D{i}")
        store_heatmap(prediction, image_bytes(color=(i, 99, 99)))
        ReviewDecisionFactory(review_item=prediction.review_item, physician=physician)
    before = {"scans": Scan.objects.count(), "decisions": ReviewDecision.objects.count()}

    # Load during the backup: uploads and signatures keep coming.
    stop = threading.Event()
    during = {"uploads": 0, "signed": 0}

    def load() -> None:
        try:
            case = CaseFactory(created_by=clinician, patient_ref="PSN-LOAD")
            n = 0
            while not stop.is_set():
                n += 1
                data = image_bytes(color=(n % 250, 7, 200))
                scans_upload(acting_user=clinician, case=case, files=[IncomingFile(name=f"l{n}.png", data=data)])
                during["uploads"] += 1
                prediction = make_prediction(clinician, active_model, [0.6, 0.4], color=(n % 250, 8, 201),
                                             ref=f"PSN-L{n}")  # fmt: skip
                ReviewDecisionFactory(review_item=prediction.review_item, physician=physician)
                during["signed"] += 1
        finally:
            close_old_connections()

    source = {**s3_env, "DATABASE_URL": _db_url(connection.settings_dict["NAME"])}
    backup_dir = tmp_path / "backup"
    worker = threading.Thread(target=load)
    worker.start()
    try:
        made = _manage(source, "backup_create", str(backup_dir))
    finally:
        stop.set()
        worker.join(timeout=120)
    assert made.returncode == 0, made.stderr
    assert during["uploads"] > 0 and during["signed"] > 0, "nothing happened during the backup"
    assert "backup in" in made.stdout and (backup_dir / "database.dump").is_file()

    # Empty services: a new database and a new, empty bucket.
    restore_db = f"{connection.settings_dict['NAME']}_restore_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(_db_url("postgres").replace("postgres://", "postgresql://"), autocommit=True)
    admin.execute(f'CREATE DATABASE "{restore_db}"')
    s3_storage.create_bucket("restored")
    target = {**s3_env, "DATABASE_URL": _db_url(restore_db), "CANCERWEB_STORAGE_URL": "s3://restored/site"}
    try:
        restored = _manage(target, "backup_restore", str(backup_dir))
        assert restored.returncode == 0, restored.stderr
        again = _manage(target, "backup_restore", str(backup_dir))  # never over existing data
        assert again.returncode != 0 and "not empty" in again.stderr

        audit = _manage(target, "verify_audit")
        assert audit.returncode == 0 and "audit chain intact" in audit.stdout, audit.stderr
        verified = _manage(target, "verify_integrity")
        assert verified.returncode == 0, verified.stderr
        # "integrity verified: audit chain N events, D signed decisions, S scans, H heat maps"
        words = verified.stdout.split()
        decisions, scans = int(words[words.index("signed") - 1]), int(words[words.index("scans,") - 1])
        assert decisions >= before["decisions"] and scans >= before["scans"]
        assert words[words.index("heat") - 1] != "0"

        # Objects stored after the dump came along unreferenced; the sweep removes them
        # and everything still verifies.
        swept = _manage(target, "sweep_storage", "--grace-seconds", "0")
        final = _manage(target, "verify_integrity")
        assert final.returncode == 0, final.stderr
        with capsys.disabled():
            print(
                f"\nDRILL backup under load: {during['uploads']} uploads and {during['signed']} signatures during "
                f"the backup; {made.stdout.strip()}; {restored.stdout.strip().split(';')[0]}; "
                f"{audit.stdout.strip()}; {verified.stdout.strip()}; after the sweep "
                f"({swept.stdout.strip().splitlines()[0]}): {final.stdout.strip()}"
            )
    finally:
        close_old_connections()
        admin.execute(f'DROP DATABASE IF EXISTS "{restore_db}" WITH (FORCE)')
        admin.close()


def test_a_backup_that_was_altered_is_refused_before_anything_is_restored(s3_storage, s3_env, clinician, tmp_path):
    case = CaseFactory(created_by=clinician)
    scans_upload(acting_user=clinician, case=case, files=[IncomingFile(name="a.png", data=image_bytes())])
    source = {**s3_env, "DATABASE_URL": _db_url(connection.settings_dict["NAME"])}
    made = _manage(source, "backup_create", str(tmp_path / "b"))
    assert made.returncode == 0, made.stderr
    blob = next(p for p in Path(tmp_path / "b" / "objects" / "scans").rglob("*") if p.is_file())
    blob.write_bytes(blob.read_bytes()[:-1] + b"x")
    refused = _manage(source, "backup_restore", str(tmp_path / "b"))
    assert refused.returncode != 0 and "does not match its SHA-256 in the manifest" in refused.stderr
