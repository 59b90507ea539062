"""API personas: each user talks to the API with a real token (or a session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import User
from diagnostics import services
from diagnostics.models import Case
from tests.conftest import image_bytes
from tests.factories import UserFactory


def api(user: User | None = None) -> APIClient:
    """A client authenticated the way a machine is: with an API token of ``user``."""
    client = APIClient()
    if user is not None:
        _, key = account_services.api_token_create(acting_user=user, user=user, name="test")
        client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def clear_throttles() -> None:
    # Only this cache's throttle keys: the Redis database is shared with the test broker.
    client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
    keys = list(client.scan_iter(match="cw:*throttle_*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:  # type: ignore[no-untyped-def]
    # Autouse, so it applies before the persona fixtures hash their passwords: the
    # production hasher's deliberate slowness adds nothing to what these tests check.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_throttles() -> Iterator[None]:
    clear_throttles()
    yield
    clear_throttles()


@pytest.fixture
def other_physician(db: None) -> User:
    return UserFactory(username="other_physician", role="physician")


def make_case(user: User, *, ref: str = "PSN-1", n_files: int = 1, seed: int = 0) -> Case:
    files = [
        services.IncomingFile(name=f"s{i}.png", data=image_bytes(color=(seed % 256, (i * 40) % 256, 120)))
        for i in range(n_files)
    ]
    return services.case_create(acting_user=user, patient_ref=ref, body_site="lymph node", files=files or None)


def ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]
