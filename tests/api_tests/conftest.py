"""API personas: each user talks to the API with a real token (or a session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.models import User
from tests.factories import UserFactory
from tests.helpers import clear_throttles


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
