"""Helpers the tests share: personas' clients, images, stored files, ports. Fixtures
live in the conftest.py files; factories for every model in tests/factories.py."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.core.cache import cache
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import TOTP, hotp
from django_otp.plugins.otp_totp.models import TOTPDevice
from PIL import Image
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import User
from accounts.otp import confirmed_device, requires_otp
from cancerweb.celery import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
PASSWORD = "correct-horse-battery-9"


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
    """Every object in the scan storage (a folder or the object store's prefix)."""
    from diagnostics.intake import storage

    return set(storage.iter_object_names())


def api(user: User | None = None) -> APIClient:
    """A client authenticated the way a machine is: with an API token of ``user``."""
    client = APIClient()
    if user is not None:
        _, key = account_services.api_token_create(acting_user=user, user=user, name="test")
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Point this process's Celery publisher at another broker (a dead port, or a
    Redis server a test started), then back."""

    def reset() -> None:
        # Forget the cached pools, without closing them: kombu keeps one pool per
        # broker URL, and the one for the original URL is used again afterwards.
        app._pool = None
        app.amqp._producer_pool = None

    # The CELERY_BROKER_URL variable outranks conf.broker_url; the write URL outranks both.
    old = app.conf.get("broker_write_url")
    reset()
    app.conf.broker_write_url = url
    try:
        yield
    finally:
        reset()
        app.conf.broker_write_url = old


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def clear_throttles() -> None:
    # Only this cache's throttle keys: the Redis database is shared with the test broker.
    client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
    keys = list(client.scan_iter(match="cw:*throttle_*"))
    if keys:
        client.delete(*keys)
