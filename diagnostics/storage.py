"""Scan bytes, addressed by SHA-256, through Django's storage API (the "scans"
storage), so an S3-compatible store can be configured instead of a folder."""

from __future__ import annotations

import hashlib

from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages


def scan_storage() -> Storage:
    return storages["scans"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def storage_name_for(sha256: str) -> str:
    return f"sha256/{sha256[:2]}/{sha256}"


def store_bytes(*, data: bytes, sha256: str) -> tuple[str, bool]:
    """Store ``data`` under its hash. Returns (name, created): ``created`` is False
    when identical bytes were already stored (content addressing deduplicates)."""
    storage = scan_storage()
    name = storage_name_for(sha256)
    if storage.exists(name):
        return name, False
    saved = storage.save(name, ContentFile(data))
    if saved != name:  # another writer raced us; keep the first copy
        storage.delete(saved)
        return name, False
    return name, True


def read_bytes(name: str) -> bytes:
    with scan_storage().open(name, "rb") as fh:
        return fh.read()


def delete_if_unreferenced(name: str) -> None:
    from diagnostics.models import Scan

    if not Scan.objects.filter(storage_name=name).exists():
        scan_storage().delete(name)


def heatmap_name_for(prediction_uuid: object) -> str:
    """Where a prediction's heat map PNG lives in scan storage. (Issue 3 produces the
    heat maps; this is the address the viewer reads them from on this branch.)"""
    return f"heatmaps/{prediction_uuid}.png"


def heatmap_exists(prediction_uuid: object) -> bool:
    return scan_storage().exists(heatmap_name_for(prediction_uuid))
