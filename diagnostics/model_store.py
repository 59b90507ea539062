"""Model bundles in object storage, for worker hosts that share no folder with the
host that registered them.

Registering a bundle publishes its files under ``bundles/<model SHA-256>/`` in the
"models" storage, and writes the index (every file's name and SHA-256) last, so a
half-published bundle is never fetched. A worker host that does not have the bundle
in its own MODEL_DIR fetches it on first use into MODEL_CACHE_DIR/<model SHA-256>:
every file is checked against the index, the model file against the registered
SHA-256 (the database, not the store, is the root of trust), then the folder is
renamed into place, so a crash mid-fetch leaves nothing that looks complete. With
the local folder (no "models" storage) nothing is published or fetched.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, storages

from diagnostics.intake.storage import backend_errors
from diagnostics.ml.bundle import MANIFEST_NAME, BundleError, sha256_file, verify_bundle

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"


def model_storage() -> Storage | None:
    return storages["models"] if "models" in settings.STORAGES else None


def _prefix(model_sha256: str) -> str:
    return f"bundles/{model_sha256}"


def _bundle_files(folder: Path) -> dict[str, str]:
    """Every regular file of the bundle (relative name -> SHA-256); hidden files skipped."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = sha256_file(path)
    return files


def bundle_publish(*, folder: Path, model_sha256: str) -> bool:
    """Put a verified bundle folder into object storage. Returns False when it is
    there already (a bundle is addressed by its model file's hash, so it never changes)."""
    store = model_storage()
    if store is None:
        return False
    prefix = _prefix(model_sha256)
    with backend_errors():
        if store.exists(f"{prefix}/{INDEX_NAME}"):
            return False
        files = _bundle_files(folder)
        for rel in files:
            with (folder / rel).open("rb") as fh:
                store.save(f"{prefix}/{rel}", File(fh))
        index = {"model_sha256": model_sha256, "files": files}
        store.save(f"{prefix}/{INDEX_NAME}", ContentFile(json.dumps(index, indent=1).encode()))
    return True


def _download(store: Storage, name: str, target: Path) -> str:
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with store.open(name, "rb") as src, target.open("wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def bundle_fetch(*, model_sha256: str, labels: list[str]) -> Path:
    """The cached copy of a registered bundle, fetched from object storage the first
    time. Raises BundleError when it is nowhere or does not match the registry, and
    StorageUnavailable when the store cannot be reached (the job waits and retries)."""
    cache_root = Path(settings.MODEL_CACHE_DIR)
    target = cache_root / model_sha256
    if (target / MANIFEST_NAME).is_file():
        return target
    store = model_storage()
    if store is None:
        raise BundleError("the model bundle is not in this host's model folder and no object storage is configured")
    cache_root.mkdir(parents=True, exist_ok=True)
    # One download per host: pool children starting together wait for the first.
    with (cache_root / f".{model_sha256}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MANIFEST_NAME).is_file():
            return target
        prefix = _prefix(model_sha256)
        with backend_errors():
            try:
                with store.open(f"{prefix}/{INDEX_NAME}", "rb") as fh:
                    index = json.loads(fh.read())
            except FileNotFoundError as exc:
                raise BundleError("the model bundle was never published to object storage") from exc
            partial = Path(tempfile.mkdtemp(dir=cache_root, prefix=f".{model_sha256[:12]}-"))
            try:
                for rel, expected in index["files"].items():
                    if Path(rel).is_absolute() or ".." in Path(rel).parts:
                        raise BundleError("the bundle index names a file outside the bundle")
                    if _download(store, f"{prefix}/{rel}", partial / rel) != expected:
                        raise BundleError(f"the fetched bundle file {rel} does not match its SHA-256")
                manifest = verify_bundle(partial)
                if manifest.model_sha256 != model_sha256:
                    raise BundleError("the fetched bundle is not the registered version (SHA-256 differs)")
                if list(manifest.labels) != list(labels):
                    raise BundleError("the fetched bundle's labels differ from the registered version's")
                os.rename(partial, target)
            finally:
                if partial.exists():
                    shutil.rmtree(partial, ignore_errors=True)
    logger.info("fetched model bundle %s from object storage", model_sha256[:12])
    return target
