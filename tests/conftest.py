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
