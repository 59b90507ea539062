"""A SeaweedFS S3 server of these tests' own (devtools/seaweed.py), on free ports with a
throw-away folder, so they can stop and restart it without disturbing anyone; each
test stores under its own prefix in the bucket."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cancerweb.env import s3_storage_backend
from devtools.seaweed import SeaweedServer, new_server


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    root = Path(tempfile.mkdtemp(prefix="cancerweb-s3-tests-"))
    server = new_server(root, bucket="cancerweb")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def s3_env(seaweed: SeaweedServer) -> dict[str, str]:
    """The environment a process on another host would get, with this test's prefix."""
    if not seaweed.alive():  # an earlier test stopped it and failed before restarting it
        seaweed.start()
    return seaweed.env(prefix=f"t-{uuid.uuid4().hex}")


@pytest.fixture
def s3_storage(settings, seaweed: SeaweedServer, s3_env: dict[str, str], tmp_path: Path) -> SeaweedServer:  # type: ignore[no-untyped-def]
    """This process's scans and bundles in the bucket (what CANCERWEB_STORAGE_URL does)."""
    prefix = s3_env["CANCERWEB_STORAGE_URL"].split("/", 3)[3]
    common = {
        "bucket": seaweed.bucket,
        "endpoint_url": seaweed.endpoint_url,
        "access_key": seaweed.access_key,
        "secret_key": seaweed.secret_key,
    }
    settings.OBJECT_STORAGE, settings.S3_BUCKET, settings.S3_PREFIX = "s3", seaweed.bucket, prefix
    settings.STORAGES = {
        **settings.STORAGES,
        "scans": s3_storage_backend(location=f"{prefix}/scans", **common),
        "models": s3_storage_backend(location=f"{prefix}/models", **common),
    }
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    return seaweed
