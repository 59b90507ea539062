"""The settings refuse to start without the values that matter for safety."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _check(env_overrides: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()}
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DJANGO_SECRET_KEY": None, "CANCERWEB_DEMO": None}, "DJANGO_SECRET_KEY must be set"),
        ({"DJANGO_SECRET_KEY": "short"}, "at least 32 characters"),
        ({"DATABASE_URL": None, "CANCERWEB_DEMO": None}, "DATABASE_URL must be set"),
        ({"CELERY_BROKER_URL": None, "CANCERWEB_DEMO": None}, "CELERY_BROKER_URL must be set"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG must be a boolean"),
        ({"CANCERWEB_UPLOAD_MAX_BYTES": "lots"}, "CANCERWEB_UPLOAD_MAX_BYTES must be an integer"),
        ({"CANCERWEB_DRIFT_PSI_THRESHOLD": "nan"}, "CANCERWEB_DRIFT_PSI_THRESHOLD must be between"),
    ],
)
def test_bad_or_missing_settings_stop_start_up(overrides: dict[str, str | None], message: str) -> None:
    result = _check(overrides)
    assert result.returncode != 0
    assert message in result.stderr


def test_debug_is_off_unless_asked() -> None:
    from django.conf import settings

    assert os.environ.get("DJANGO_DEBUG") in (None, "", "0", "false")
    assert settings.DEBUG is False
