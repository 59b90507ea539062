"""The API's settings refuse malformed values at start-up, like the rest."""

from __future__ import annotations

import pytest

from tests.test_settings_fail_closed import _check


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"CANCERWEB_CACHE_URL": "memcached://127.0.0.1"}, "CANCERWEB_CACHE_URL must be redis://"),
        ({"CANCERWEB_API_RATE_USER": "lots"}, "CANCERWEB_API_RATE_USER must look like 120/minute"),
        ({"CANCERWEB_API_RATE_TOKEN": "0/minute"}, "CANCERWEB_API_RATE_TOKEN must look like"),
        ({"CANCERWEB_API_TOKEN_MAX_DAYS": "0"}, "CANCERWEB_API_TOKEN_MAX_DAYS must be >= 1"),
    ],
)
def test_bad_api_settings_stop_start_up(overrides: dict[str, str | None], message: str) -> None:
    result = _check(overrides)
    assert result.returncode != 0
    assert message in result.stderr


def test_throttles_count_in_the_shared_redis_cache() -> None:
    from django.conf import settings

    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert settings.CACHES["default"]["LOCATION"] == settings.CELERY_BROKER_URL
