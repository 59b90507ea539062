"""Backup and restore of the database and the object store, consistent with each other,
and the integrity check to run after a restore.

Order, and why it is consistent: the database is dumped FIRST (pg_dump reads one
snapshot), the objects are copied AFTER. Stored objects are content-addressed and
never change under their name (a key rotation replaces a blob with the same plaintext,
still readable with the keys configured) and an object is deleted only while no row
refers to it (a failed upload's cleanup, the orphan sweep). So every object the dump
refers to still exists when the copy reaches it, whatever happens meanwhile; objects
stored after the dump are copied too and, unreferenced after a restore, are removed
by the orphan sweep. The other order (objects, then the dump) would miss the objects
of uploads committed in between.

The encryption keys are not in the backup (a stolen backup stays unreadable): keep
CANCERWEB_ENCRYPTION_KEYS, every key still in use, in the secret store beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage
from django.db import connection
from django.utils import timezone

from diagnostics.intake import storage
from diagnostics.model_store import model_storage

MANIFEST = "backup.json"
DUMP = "database.dump"


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why."""


def _pg_env_args() -> tuple[dict[str, str], list[str]]:
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        raise BackupError("backups need PostgreSQL (the demo's SQLite file is copied as a file)")
    env = {**os.environ}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    args = ["-h", str(db.get("HOST") or "127.0.0.1"), "-p", str(db.get("PORT") or 5432)]
    args += ["-U", str(db.get("USER") or "postgres"), "-d", str(db["NAME"])]
    return env, args


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not installed (Debian: postgresql-client, the server's major version or newer)")
    return found


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stores() -> dict[str, Storage]:
    stores = {"scans": storage.scan_storage()}
    models = model_storage()
    if models is not None:
        stores["models"] = models
    return stores


def _read(store: Storage, name: str) -> bytes:
    with storage.backend_errors(), store.open(name, "rb") as fh:
        data: bytes = fh.read()
        return data


@dataclass
class BackupReport:
    folder: Path
    objects: dict[str, int] = field(default_factory=dict)
    bytes: int = 0


def backup_create(*, folder: Path) -> BackupReport:
    """Dump PostgreSQL, then copy every stored object as it is (still encrypted)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty; a backup goes into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    started = timezone.now()
    env, args = _pg_env_args()
    dump = folder / DUMP
    # 1. The database: one consistent snapshot (custom format, restored with pg_restore).
    result = subprocess.run(  # noqa: S603 (arguments from settings, not from a request)
        [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--file", str(dump), *args],
        env=env, capture_output=True, text=True, timeout=6 * 3600,
    )  # fmt: skip
    if result.returncode:
        raise BackupError(f"pg_dump failed: {result.stderr.strip()[:500]}")
    # 2. The objects, after the dump (see the module docstring for why this order).
    report = BackupReport(folder=folder)
    files: dict[str, dict[str, str]] = {}
    for kind, store in _stores().items():
        files[kind] = {}
        for name in storage.iter_object_names(store=store):
            if name.startswith(storage.PROBE_PREFIX) or name.endswith(storage.PARTIAL_SUFFIX):
                continue
            try:
                data = _read(store, name)
            except FileNotFoundError:  # deleted since it was listed: unreferenced (see above)
                continue
            target = folder / "objects" / kind / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files[kind][name] = hashlib.sha256(data).hexdigest()
            report.bytes += len(data)
        report.objects[kind] = len(files[kind])
    manifest = {
        "format": 1,
        "started_at": started.isoformat(),
        "finished_at": timezone.now().isoformat(),
        "database": {
            "file": DUMP,
            "sha256": _sha256_file(dump),
            "server_version": getattr(connection, "pg_version", None),
        },
        "objects": files,
        # Which keys the blobs need (ids only: the keys themselves stay out of backups).
        "encryption_key_ids": [key_id for key_id, _ in settings.ENCRYPTION_KEYS],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return report


def _database_is_empty() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        row = cursor.fetchone()
    return bool(row and row[0] == 0)


def backup_restore(*, folder: Path) -> dict[str, Any]:
    """Restore a backup into EMPTY services: an empty database, an empty store. Every
    file is checked against the backup's manifest before anything is written."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder} holds no readable {MANIFEST}: {exc}") from exc
    if _sha256_file(folder / DUMP) != manifest["database"]["sha256"]:
        raise BackupError("the database dump does not match its SHA-256 in the manifest")
    for kind, names in manifest["objects"].items():
        for name, digest in names.items():
            if _sha256_file(folder / "objects" / kind / name) != digest:
                raise BackupError(f"object {kind}/{name} does not match its SHA-256 in the manifest")
    missing_keys = set(manifest["encryption_key_ids"]) - {key_id for key_id, _ in settings.ENCRYPTION_KEYS}
    if missing_keys:
        raise BackupError(f"CANCERWEB_ENCRYPTION_KEYS lacks key(s) {sorted(missing_keys)} that the backup needs")
    if not _database_is_empty():
        raise BackupError("the target database is not empty; restore into a new, empty database")
    stores = _stores()
    for kind in manifest["objects"]:
        if kind not in stores:
            raise BackupError(f"the backup holds {kind} objects but no {kind} storage is configured")
        if next(iter(storage.iter_object_names(store=stores[kind])), None) is not None:
            raise BackupError(f"the target {kind} storage is not empty; restore into an empty bucket or folder")
    env, args = _pg_env_args()
    result = subprocess.run(  # noqa: S603 (arguments from settings, not from a request)
        [_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", *args, str(folder / DUMP)],
        env=env, capture_output=True, text=True, timeout=6 * 3600,
    )  # fmt: skip
    if result.returncode:
        raise BackupError(f"pg_restore failed: {result.stderr.strip()[:500]}")
    restored = {}
    for kind, names in manifest["objects"].items():
        store = stores[kind]
        for name in names:
            with storage.backend_errors():
                saved = store.save(name, ContentFile((folder / "objects" / kind / name).read_bytes()))
            if saved != name:
                raise BackupError(f"the store renamed {name} to {saved}")
        restored[kind] = len(names)
    connection.close()  # the restored schema: start from a fresh connection
    return restored


@dataclass
class IntegrityReport:
    audit_events: int = 0
    decisions: int = 0
    scans: int = 0
    heatmaps: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def integrity_check(*, limit_problems: int = 20) -> IntegrityReport:
    """After a restore (or any time): the audit chain is intact, every signed
    decision's signature verifies, every scan and heat map decrypts and matches its
    SHA-256."""
    from accounts.audit import verify_chain
    from diagnostics.models import Prediction, ReviewDecision, Scan
    from diagnostics.selectors.signatures import signature_check

    report = IntegrityReport()
    chain = verify_chain()
    report.audit_events = chain.checked
    if not chain.ok:
        report.problems.append(f"audit chain broken at {chain.first_break}")

    def problem(text: str) -> None:
        if len(report.problems) < limit_problems:
            report.problems.append(text)

    for decision in ReviewDecision.objects.order_by("id").iterator(chunk_size=500):
        report.decisions += 1
        check = signature_check(decision)
        if not check.verifies:
            problem(f"decision {decision.uuid}: {check.problem}")
    for scan in Scan.objects.order_by("id").only("uuid", "storage_name", "sha256").iterator(chunk_size=500):
        report.scans += 1
        try:
            if storage.sha256_bytes(storage.read_bytes(scan.storage_name)) != scan.sha256:
                problem(f"scan {scan.uuid}: decrypted bytes do not match its SHA-256")
        except (storage.EncryptionError, FileNotFoundError, storage.StorageUnavailable) as exc:
            problem(f"scan {scan.uuid}: {type(exc).__name__}: {exc}")
    names = Prediction.objects.exclude(heatmap_storage_name="").values_list("heatmap_storage_name", flat=True)
    for name in names.distinct().iterator(chunk_size=500):
        report.heatmaps += 1
        try:
            if storage.sha256_bytes(storage.read_bytes(name)) != name.rsplit("/", 1)[-1]:
                problem(f"heat map {name}: decrypted bytes do not match its name")
        except (storage.EncryptionError, FileNotFoundError, storage.StorageUnavailable) as exc:
            problem(f"heat map {name}: {type(exc).__name__}: {exc}")
    return report
