"""API personas: each user talks to the API with a real token (or a session)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accounts.models import User
from tests.factories import UserFactory
from tests.helpers import ROOT, clear_throttles, free_port


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


def demo_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY")}
    env.update({"CANCERWEB_DATA_DIR": str(data_dir), "CANCERWEB_DEMO": "1"})
    return env


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`bin/demo` as a user starts it (SQLite, filesystem broker, one worker with beat),
    once for the tests that talk to it over HTTP; each keeps to its own cases."""
    tmp_path = tmp_path_factory.mktemp("demo")
    port = free_port()
    data_dir = tmp_path / "demo"
    # The sweeper on the demo's beat every 3 s instead of 60, so a test sees it act.
    env = {**demo_env(data_dir), "PORT": str(port), "CANCERWEB_JOB_SWEEP_INTERVAL_S": "3"}
    out_path = tmp_path / "demo.out"
    out = out_path.open("w")
    proc = subprocess.Popen(
        ["bin/demo"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 300
    text = ""
    while "Stop with Ctrl-C" not in text:
        text = out_path.read_text()
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"bin/demo did not come up:\n{text[-3000:]}")
        time.sleep(0.5)
    password = re.search(r"password for all three: (\S+)\)", text)
    assert password, text
    yield {"url": f"http://127.0.0.1:{port}", "password": password.group(1), "data_dir": data_dir, "banner": text}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    out.close()


def demo_token(demo: dict[str, Any], username: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "api_token_create", username, "--name", "test client", "--days", "1"],
        cwd=ROOT,
        env=demo_env(demo["data_dir"]),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()
