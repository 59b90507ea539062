"""Fixed personas and shared fixtures. Tests run against the real PostgreSQL and
Redis configured by bin/test (DATABASE_URL, CELERY_BROKER_URL)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from accounts import services as account_services
from accounts.models import CareUnit, User
from diagnostics.models import ModelVersion
from diagnostics.services.model_registry import model_register
from tests.factories import UserFactory
from tests.helpers import ROOT


@pytest.fixture
def care_unit(db: None) -> CareUnit:
    return account_services.unit_create(acting_user=None, name="Unit A")


@pytest.fixture
def other_unit(db: None) -> CareUnit:
    return account_services.unit_create(acting_user=None, name="Unit B")


def _member(user: User, unit: CareUnit) -> User:
    account_services.unit_member_add(acting_user=None, unit=unit, user=user)
    return user


@pytest.fixture
def clinician(care_unit: CareUnit) -> User:
    user = UserFactory(username="clinician", first_name="Clara", last_name="Clinician", role="clinician")
    return _member(user, care_unit)


@pytest.fixture
def other_unit_clinician(other_unit: CareUnit) -> User:
    return _member(UserFactory(username="other_unit_clinician", role="clinician"), other_unit)


@pytest.fixture
def other_clinician(other_unit_clinician: User) -> User:
    """A clinician of another care unit (kept for the older tests' name)."""
    return other_unit_clinician


@pytest.fixture
def physician(care_unit: CareUnit) -> User:
    user = UserFactory(username="physician", first_name="Peter", last_name="Physician", role="physician")
    return _member(user, care_unit)


@pytest.fixture
def other_unit_physician(other_unit: CareUnit) -> User:
    return _member(UserFactory(username="other_unit_physician", role="physician"), other_unit)


@pytest.fixture
def admin_user(db: None) -> User:
    """Manages users, units, models and the audit trail; member of no unit."""
    return UserFactory(username="admin", role="admin")


@pytest.fixture
def outsider(db: None) -> User:
    """Logged in, but holds no role."""
    return UserFactory(username="outsider")


@pytest.fixture
def active_model(db: None) -> ModelVersion:
    return model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "demo-pcam", activate=True)


@pytest.fixture(autouse=True)
def isolated_scan_storage(request: pytest.FixtureRequest, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each test gets its own scan folder, so content-addressed files never leak
    between tests. Tests with a real worker process share the configured folder.

    With the object store configured (bin/test's SeaweedFS pass, CANCERWEB_STORAGE_URL
    set), each test gets its own prefix in the bucket instead."""
    if any(request.node.get_closest_marker(m) for m in ("worker", "browser", "faults", "s3")):
        return
    if settings.OBJECT_STORAGE == "s3":
        # Scans only: bundles are addressed by their model's hash, so tests share them.
        backend = settings.STORAGES["scans"]
        options = {**backend["OPTIONS"], "location": f"{backend['OPTIONS']['location']}/t-{uuid.uuid4().hex}"}
        settings.STORAGES = {**settings.STORAGES, "scans": {**backend, "OPTIONS": options}}
        return
    scans = tmp_path / "scans"
    settings.SCAN_STORAGE_DIR = scans
    settings.STORAGES = {
        **settings.STORAGES,
        "scans": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(scans)}},
    }


@contextlib.contextmanager
def celery_worker(log_path: Path, extra_env: dict[str, str] | None = None, name: str = "test"):  # type: ignore[no-untyped-def]
    """A real `celery worker` process on the real Redis broker and the test database,
    with `extra_env` on top of this process's environment (KERAS_BACKEND=jax, say)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from django.db import connection

    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        **(extra_env or {}),
    }
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "cancerweb", "worker", "-Q", "inference,default",
         "-c", "1", "--loglevel=INFO", "-n", f"{name}-{os.getpid()}@%h", "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "ready." not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def celery_worker_process(transactional_db: None, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real `celery worker` process on the real Redis broker and the test database."""
    import redis

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()  # messages left by earlier tests name jobs that no longer exist
    with celery_worker(tmp_path / "worker.log") as proc:
        yield proc
