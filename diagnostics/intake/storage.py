"""Scan bytes, addressed by SHA-256, through Django's storage API (the "scans"
storage): a local folder by default, an S3-compatible object store when
CANCERWEB_STORAGE_URL says so (django-storages' S3 backend), with the same code.

Everything stored is encrypted at rest (AES-256-GCM, see diagnostics/encryption.py)
inside `store_bytes` / `read_bytes`, so every caller (scans, heat maps) gets it. The
address stays the SHA-256 of the PLAINTEXT: identical uploads still deduplicate and
the worker's hash check compares decrypted bytes with the recorded digest.

A store that cannot be reached, or refuses our credentials, raises StorageUnavailable
(pages and the API answer 503); a caller that stored objects before the failure
removes them, and what it could not remove (the store was down) is found by
`orphans_sweep` once the store is back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.utils import timezone

from core.exceptions import ServiceUnavailable
from diagnostics.intake.encryption import MAGIC, EncryptionError, KeyRing, blob_key_id, decrypt, encrypt

__all__ = ["EncryptionError", "StorageUnavailable", "read_bytes", "store_bytes"]

logger = logging.getLogger(__name__)

# A rotation in progress writes the re-encrypted copy here before it replaces the
# original, so an interrupted rotation can always be finished (see rotate_object).
ROTATING_SUFFIX = ".rotating"
# A local rotation's temporary file before its atomic rename; a leftover is garbage
# (the original was never touched) and the next run deletes it.
PARTIAL_SUFFIX = ".partial"
CONTENT_NAME = re.compile(r"^sha256/[0-9a-f]{2}/[0-9a-f]{64}$")
PROBE_PREFIX = "health/"


class StorageUnavailable(ServiceUnavailable):
    """The object store cannot be reached or refuses the request (down, wrong
    credentials, missing bucket). Nothing of the failed write is kept."""

    def __init__(self, reason: str) -> None:
        super().__init__("storage_unavailable", f"the image store is unavailable ({reason}); nothing was saved")
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """What went wrong, in words an operator acts on, without object names or data."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a runtime dependency
        BotoCoreError = ClientError = ()  # noqa: N806
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket" or (status == 404 and code in ("", "404")):
            return "the bucket does not exist"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
            return "the store refused the credentials"
        return f"the store answered {status or '?'} {code}".strip()
    if isinstance(exc, BotoCoreError):
        return f"cannot reach the store: {type(exc).__name__}"
    if isinstance(exc, OSError):
        return f"the storage folder failed: {type(exc).__name__}"
    return type(exc).__name__


@contextmanager
def backend_errors() -> Iterator[None]:
    """Turn a backend's failure into StorageUnavailable; a missing object stays a
    FileNotFoundError and a bad blob an EncryptionError."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover
        BotoCoreError = ClientError = OSError  # noqa: N806
    try:
        yield
    except (FileNotFoundError, EncryptionError, StorageUnavailable):
        raise
    except (BotoCoreError, ClientError, OSError) as exc:
        raise StorageUnavailable(_reason(exc)) from exc


def scan_storage() -> Storage:
    return storages["scans"]


def keyring() -> KeyRing:
    return KeyRing(keys=tuple(settings.ENCRYPTION_KEYS))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def storage_name_for(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


def store_bytes(*, data: bytes, sha256: str) -> tuple[str, bool]:
    """Encrypt ``data`` and store it under its (plaintext) hash. Returns (name, created):
    ``created`` is False when identical bytes were already stored (content addressing
    deduplicates)."""
    storage = scan_storage()
    name = storage_name_for(sha256)
    with backend_errors():
        if storage.exists(name):
            return name, False
        saved = storage.save(name, ContentFile(encrypt(data, keyring=keyring(), name=name)))
        if saved != name:  # another writer raced us (a folder keeps both); keep the first copy
            storage.delete(saved)
            return name, False
    return name, True


def read_raw(name: str) -> bytes:
    with backend_errors(), scan_storage().open(name, "rb") as fh:
        data: bytes = fh.read()
        return data


def write_raw(name: str, blob: bytes) -> None:
    """Store ``blob`` as it is under ``name``, replacing what is there (tests and
    restores; everything else goes through store_bytes)."""
    storage = scan_storage()
    with backend_errors():
        storage.delete(name)
        saved = storage.save(name, ContentFile(blob))
    assert saved == name


def read_bytes(name: str) -> bytes:
    """The decrypted bytes; raises EncryptionError when the blob was altered or its key is unknown."""
    return decrypt(read_raw(name), keyring=keyring(), name=name)


def delete(name: str) -> None:
    with backend_errors():
        scan_storage().delete(name)


def referenced_names(names: Iterable[str]) -> set[str]:
    """Which of these stored names a database row refers to. Every kind of row that
    holds a storage name must be listed here, or orphans_sweep would delete its objects."""
    from diagnostics.models import Prediction, Scan

    wanted = list(names)
    found: set[str] = set()
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start : start + 1000]
        found.update(Scan.objects.filter(storage_name__in=chunk).values_list("storage_name", flat=True))
        found.update(
            Prediction.objects.filter(heatmap_storage_name__in=chunk).values_list("heatmap_storage_name", flat=True)
        )
        found.update(
            Prediction.objects.filter(slide_map_storage_name__in=chunk).values_list("slide_map_storage_name", flat=True)
        )
    return found


def delete_if_unreferenced(name: str) -> None:
    if not referenced_names([name]):
        delete(name)


def is_object_store(storage: Storage | None = None) -> bool:
    """An S3-compatible store (no local paths) rather than a folder."""
    return hasattr(storage or scan_storage(), "bucket_name")


def iter_objects(prefix: str = "", *, store: Storage | None = None) -> Iterator[tuple[str, datetime]]:
    """(name, last modified) of every object under ``prefix`` in the scan storage (or
    in ``store``, e.g. the model bundles' storage)."""
    storage = store or scan_storage()
    if is_object_store(storage):
        # One flat listing, a thousand names per request, instead of a walk per folder.
        client = storage.connection.meta.client  # type: ignore[attr-defined]  # an S3Storage
        root = storage.location.strip("/")  # type: ignore[attr-defined]  # an S3Storage
        base = f"{root}/" if root else ""
        with backend_errors():
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=storage.bucket_name,  # type: ignore[attr-defined]  # an S3Storage
                Prefix=base + prefix,
            ):
                for entry in page.get("Contents", ()):
                    yield entry["Key"][len(base) :], entry["LastModified"]
        return
    for name in iter_object_names(prefix.rstrip("/"), store=storage):
        with backend_errors():
            yield name, storage.get_modified_time(name)


def orphans(*, older_than: timedelta) -> list[str]:
    """Content-addressed objects (and health probes) that no row refers to and that
    are older than ``older_than`` (so an upload still in its transaction is never
    counted). Names of other shapes (a rotation's copies, other features' objects)
    are left alone."""
    cutoff = timezone.now() - older_than
    candidates = []
    for name, modified in iter_objects():
        if modified > cutoff:
            continue
        if name.startswith(PROBE_PREFIX) or CONTENT_NAME.match(name):
            candidates.append(name)
    content = [n for n in candidates if not n.startswith(PROBE_PREFIX)]
    kept = referenced_names(content)
    return [n for n in candidates if n not in kept]


def orphans_sweep(*, older_than: timedelta | None = None, dry_run: bool = False) -> list[str]:
    """Delete what an upload that failed halfway could not remove (the store or the
    database was down at the time). Runs periodically (CELERY_BEAT_SCHEDULE) and as
    `manage.py sweep_storage`; returns the names it found."""
    if older_than is None:
        older_than = timedelta(seconds=settings.STORAGE_ORPHAN_GRACE_S)
    found = orphans(older_than=older_than)
    if not dry_run:
        for name in found:
            # Checked again right before: a new upload may have referred to it since.
            if not CONTENT_NAME.match(name) or not referenced_names([name]):
                delete(name)
    if found:
        logger.warning("storage sweep: %d orphaned object(s) %s", len(found), "found" if dry_run else "deleted")
    return found


def check_reachable() -> None:
    """Start-up check of an object store: the bucket exists and takes our credentials.
    Raises StorageUnavailable naming the problem. A local folder is always fine here
    (it is made on first save)."""
    storage = scan_storage()
    if not is_object_store(storage):
        return
    with backend_errors():
        storage.connection.meta.client.head_bucket(Bucket=storage.bucket_name)  # type: ignore[attr-defined]  # an S3Storage


# --- key rotation -----------------------------------------------------------------


def iter_object_names(prefix: str = "", *, store: Storage | None = None) -> Iterator[str]:
    """Every stored object's name, walking folders through the storage API."""
    storage = store or scan_storage()
    if is_object_store(storage):
        for name, _ in iter_objects(prefix, store=storage):
            yield name
        return
    try:
        dirs, files = storage.listdir(prefix)
    except FileNotFoundError:  # nothing stored yet: a local folder is made on first save
        return
    for file_name in sorted(files):
        yield f"{prefix}/{file_name}" if prefix else file_name
    for dir_name in sorted(dirs):
        yield from iter_object_names(f"{prefix}/{dir_name}" if prefix else dir_name, store=storage)


def _replace(name: str, blob: bytes) -> None:
    storage = scan_storage()
    try:
        path = storage.path(name)
    except NotImplementedError:
        path = None
    if path is not None:
        # Local folder: write beside the original and rename over it, atomic on POSIX.
        folder = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=PARTIAL_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    if getattr(storage, "file_overwrite", False):
        # S3: a PUT over an existing key is atomic (readers see the old or the new
        # object, never neither), so the object is replaced in one step.
        with backend_errors():
            saved = storage.save(name, ContentFile(blob))
        assert saved == name
        return
    # Object stores that do not overwrite: keep a re-encrypted copy first, so a crash
    # between delete and save leaves the copy for the next run to finish from.
    copy = name + ROTATING_SUFFIX
    if storage.exists(copy):
        storage.delete(copy)
    storage.save(copy, ContentFile(blob))
    storage.delete(name)
    storage.save(name, ContentFile(blob))
    storage.delete(copy)


def finish_interrupted_rotation(copy_name: str) -> str | None:
    """A ``.rotating`` copy left by an interrupted run on an object store: put it back
    under its name when the original is gone, then drop it. Returns the restored name."""
    storage = scan_storage()
    name = copy_name[: -len(ROTATING_SUFFIX)]
    restored = None
    if not storage.exists(name):
        storage.save(name, ContentFile(read_raw(copy_name)))
        restored = name
    storage.delete(copy_name)
    return restored


def rotate_object(name: str) -> bool:
    """Re-encrypt one object with the current key. Returns False when it already uses
    it (so running rotation twice, or after an interruption, redoes nothing)."""
    ring = keyring()
    blob = read_raw(name)
    if not blob.startswith(MAGIC) and name.rsplit("/", 1)[-1] == sha256_bytes(blob):
        # Stored before encryption at rest existed: its name proves it is an intact
        # plaintext object, so encrypt it in place.
        _replace(name, encrypt(blob, keyring=ring, name=name))
        return True
    if blob_key_id(blob) == ring.current_id:
        return False
    plaintext = decrypt(blob, keyring=ring, name=name)
    _replace(name, encrypt(plaintext, keyring=ring, name=name))
    return True


# --- objects stored in chunks (whole-slide images) -----------------------------------
#
# AES-GCM over a whole file does not stream, and a slide can be gigabytes: a slide is
# stored as encrypted chunks named <prefix>/<index>, each with its own nonce and its
# name (so its index) as authenticated data: a chunk moved to another index, or to
# another slide, does not decrypt. A "complete" object written last marks a slide whose
# chunks are all there; a crash before it leaves chunks the next attempt overwrites.

COMPLETE_MARKER = "complete"


def store_object(*, name: str, data: bytes) -> None:
    """Encrypt and store ``data`` under an explicit name, replacing a leftover of an
    interrupted earlier write of the same name."""
    storage = scan_storage()
    if storage.exists(name):
        storage.delete(name)
    saved = storage.save(name, ContentFile(encrypt(data, keyring=keyring(), name=name)))
    if saved != name:  # a concurrent writer of the same name: keep theirs, the bytes are the same
        storage.delete(saved)


def read_object(name: str) -> bytes:
    return read_bytes(name)


def chunk_name(prefix: str, index: int) -> str:
    return f"{prefix}/{index:06d}"


def slide_prefix_for(sha256: str) -> str:
    return f"slides/{sha256[:2]}/{sha256}"


def chunk_count(size: int, chunk_bytes: int) -> int:
    return max(1, -(-size // chunk_bytes))


def store_file_chunks(*, path: str | os.PathLike[str], sha256: str, chunk_bytes: int) -> tuple[str, bool]:
    """Store a local (decrypted) file as encrypted chunks under its SHA-256. Returns
    (prefix, created); ``created`` is False when the same slide was stored before."""
    prefix = slide_prefix_for(sha256)
    marker = f"{prefix}/{COMPLETE_MARKER}"
    if scan_storage().exists(marker):
        return prefix, False
    size = 0
    with open(path, "rb") as fh:
        index = 0
        while chunk := fh.read(chunk_bytes):
            store_object(name=chunk_name(prefix, index), data=chunk)
            size += len(chunk)
            index += 1
    store_object(name=marker, data=f'{{"size": {size}, "chunk_bytes": {chunk_bytes}, "chunks": {index}}}'.encode())
    return prefix, True


def iter_chunks(prefix: str, count: int) -> Iterator[bytes]:
    """The decrypted chunks of a chunked object, in order."""
    for index in range(count):
        yield read_object(chunk_name(prefix, index))


def delete_prefix(prefix: str) -> None:
    """Delete every object under ``prefix`` (a slide's or an upload's chunks)."""
    storage = scan_storage()
    for name in list(iter_object_names(prefix)):
        storage.delete(name)


def delete_slide_if_unreferenced(prefix: str) -> None:
    from diagnostics.models import Scan

    if not Scan.objects.filter(storage_name=prefix).exists():
        delete_prefix(prefix)
