"""Fixed personas and shared fixtures. Tests run against the real PostgreSQL and
Redis configured by bin/test (DATABASE_URL, CELERY_BROKER_URL)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP, hotp
from django_otp.plugins.otp_totp.models import TOTPDevice
from PIL import Image

from accounts import services as account_services
from accounts.models import CareUnit, User
from accounts.otp import confirmed_device, requires_otp
from diagnostics import services
from diagnostics.models import ModelVersion
from tests.factories import PASSWORD, UserFactory

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


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


def otp_device(user: User) -> TOTPDevice:
    device = confirmed_device(user)
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="test authenticator", confirmed=True)
    return device


def otp_code(user: User) -> str:
    """A code the user's authenticator would show now, or for the next step when the
    current one was used already (TOTP refuses a replayed step)."""
    device = otp_device(user)
    device.refresh_from_db()
    now_step = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift).t()
    step = max(now_step, device.last_t + 1)
    return str(hotp(device.bin_key, step, digits=device.digits)).zfill(device.digits)


def login(user: User) -> Client:
    """A client logged in as the user, past the second factor where their role needs
    one (as if they had typed the code). The login form itself, lockout and the code
    check are tested in tests/accounts_tests through the real pages."""
    assert user.check_password(PASSWORD)
    client = Client()
    client.force_login(user)
    if requires_otp(user):
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = otp_device(user).persistent_id
        session.save()
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
