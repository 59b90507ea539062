"""Scan bytes, addressed by SHA-256, through Django's storage API (the "scans"
storage), so an S3-compatible store can be configured instead of a folder.

Everything stored is encrypted at rest (AES-256-GCM, see diagnostics/encryption.py)
inside `store_bytes` / `read_bytes`, so every caller (scans, heat maps) gets it. The
address stays the SHA-256 of the PLAINTEXT: identical uploads still deduplicate and
the worker's hash check compares decrypted bytes with the recorded digest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages

from diagnostics.intake.encryption import MAGIC, EncryptionError, KeyRing, blob_key_id, decrypt, encrypt

__all__ = ["EncryptionError", "read_bytes", "store_bytes"]

# A rotation in progress writes the re-encrypted copy here before it replaces the
# original, so an interrupted rotation can always be finished (see rotate_object).
ROTATING_SUFFIX = ".rotating"
# A local rotation's temporary file before its atomic rename; a leftover is garbage
# (the original was never touched) and the next run deletes it.
PARTIAL_SUFFIX = ".partial"


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
    if storage.exists(name):
        return name, False
    saved = storage.save(name, ContentFile(encrypt(data, keyring=keyring(), name=name)))
    if saved != name:  # another writer raced us; keep the first copy
        storage.delete(saved)
        return name, False
    return name, True


def read_raw(name: str) -> bytes:
    with scan_storage().open(name, "rb") as fh:
        return fh.read()


def read_bytes(name: str) -> bytes:
    """The decrypted bytes; raises EncryptionError when the blob was altered or its key is unknown."""
    return decrypt(read_raw(name), keyring=keyring(), name=name)


def delete_if_unreferenced(name: str) -> None:
    from diagnostics.models import Scan

    if not Scan.objects.filter(storage_name=name).exists():
        scan_storage().delete(name)


# --- key rotation -----------------------------------------------------------------


def iter_object_names(prefix: str = "") -> Iterator[str]:
    """Every stored object's name, walking folders through the storage API."""
    storage = scan_storage()
    try:
        dirs, files = storage.listdir(prefix)
    except FileNotFoundError:  # nothing stored yet: a local folder is made on first save
        return
    for file_name in sorted(files):
        yield f"{prefix}/{file_name}" if prefix else file_name
    for dir_name in sorted(dirs):
        yield from iter_object_names(f"{prefix}/{dir_name}" if prefix else dir_name)


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
    # Object stores have no rename: keep a re-encrypted copy first, so a crash between
    # delete and save leaves the copy for the next run to finish from.
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
