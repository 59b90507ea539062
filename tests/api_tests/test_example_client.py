"""The README's example client, as written, against bin/demo: it uploads a scan,
waits for the real worker's prediction and, once a physician has signed through
the API, prints the signed result."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "examples" / "client.py"

pytestmark = [pytest.mark.worker]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY")}
    env.update({"CANCERWEB_DATA_DIR": str(data_dir), "CANCERWEB_DEMO": "1"})
    return env


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    data_dir = tmp_path / "demo"
    env = {**_demo_env(data_dir), "PORT": str(port)}
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
    yield {"url": f"http://127.0.0.1:{port}", "password": password.group(1), "data_dir": data_dir}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    out.close()


def _token(demo: dict, username: str) -> str:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "manage.py", "api_token_create", username, "--name", "example client", "--days", "1"],
        cwd=ROOT,
        env=_demo_env(demo["data_dir"]),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.strip()


def test_readme_shows_examples_client_py_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert CLIENT.read_text() in blocks


def test_example_client_runs_against_the_demo(demo, tmp_path):
    clinician_key, physician_key = _token(demo, "clinician"), _token(demo, "physician")
    log = (tmp_path / "client.out").open("w")
    client = subprocess.Popen(
        [sys.executable, str(CLIENT), str(ROOT / "samples" / "pcam-metastasis-1.jpg")],
        env={**os.environ, "CANCERWEB_URL": demo["url"], "CANCERWEB_TOKEN": clinician_key, "WAIT": "600"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # The physician, through the API: wait for the item, then confirm and sign.
        doctor = requests.Session()
        doctor.headers["Authorization"] = f"Token {physician_key}"
        deadline = time.monotonic() + 600
        items: list[dict] = []  # type: ignore[type-arg]
        while not items:
            assert client.poll() is None, (tmp_path / "client.out").read_text()
            assert time.monotonic() < deadline, "no prediction reached the review queue"
            time.sleep(2)
            items = doctor.get(f"{demo['url']}/api/v1/review-queue/", timeout=30).json()["results"]
        item = items[0]
        signed = doctor.post(
            f"{demo['url']}/api/v1/review-items/{item['id']}/decisions/",
            json={"outcome": "confirmed", "password": demo["password"]},
            timeout=30,
        )
        assert signed.status_code == 201, signed.text
        client.wait(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
        log.close()
    output = (tmp_path / "client.out").read_text()
    assert client.returncode == 0, output
    stage = item["prediction"]["predicted_label"]
    assert "uploaded scan" in output
    assert "the model has run; waiting for a physician" in output
    assert f"signed result: {stage} (confirmed) by Peter Physician at " in output
