"""Fixed personas and shared fixtures. Tests run against the real PostgreSQL and
Redis configured by bin/test (DATABASE_URL, CELERY_BROKER_URL)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from PIL import Image

from accounts.models import User
from diagnostics import services
from diagnostics.models import ModelVersion
from tests.factories import PASSWORD, UserFactory

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture
def clinician(db: None) -> User:
    return UserFactory(username="clinician", first_name="Clara", last_name="Clinician", role="clinician")


@pytest.fixture
def other_clinician(db: None) -> User:
    return UserFactory(username="other_clinician", role="clinician")


@pytest.fixture
def physician(db: None) -> User:
    return UserFactory(username="physician", first_name="Peter", last_name="Physician", role="physician")


@pytest.fixture
def admin_user(db: None) -> User:
    return UserFactory(username="admin", role="admin")


@pytest.fixture
def outsider(db: None) -> User:
    """Logged in, but holds no role."""
    return UserFactory(username="outsider")


def login(user: User) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def active_model(db: None) -> ModelVersion:
    return services.model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "demo-pcam", activate=True)


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (96, 96), color: tuple[int, int, int] = (200, 80, 120)
) -> bytes:
    img = Image.new("RGB", size, color)
    # A little structure so encoders do not collapse it to nothing.
    for x in range(0, size[0], 7):
        img.putpixel((x, x % size[1]), (10, 200, 30))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def sample_bytes(name: str = "pcam-metastasis-1.jpg") -> bytes:
    return (SAMPLES / name).read_bytes()


def stored_files() -> set[str]:
    root = Path(settings.SCAN_STORAGE_DIR)
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def isolated_scan_storage(request: pytest.FixtureRequest, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each test gets its own scan folder, so content-addressed files never leak
    between tests. Tests with a real worker process share the configured folder."""
    if any(request.node.get_closest_marker(m) for m in ("worker", "browser", "faults")):
        return
    scans = tmp_path / "scans"
    settings.SCAN_STORAGE_DIR = scans
    settings.STORAGES = {
        **settings.STORAGES,
        "scans": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(scans)}},
    }


@pytest.fixture
def celery_worker_process(transactional_db: None, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real `celery worker` process on the real Redis broker and the test database."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import redis
    from django.db import connection

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()  # messages left by earlier tests name jobs that no longer exist
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
    }
    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "cancerweb", "worker", "-Q", "inference,default",
         "-c", "1", "--loglevel=INFO", "-n", f"test-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while "ready." not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"celery worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
