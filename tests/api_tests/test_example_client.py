"""The README's example client, as written, against bin/demo: it uploads a scan,
waits for the real worker's prediction and, once a physician has signed through
the API, prints the signed result."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.api_tests.conftest import demo_token

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "examples" / "client.py"

pytestmark = [pytest.mark.worker]


def test_readme_shows_examples_client_py_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert CLIENT.read_text() in blocks


def test_example_client_runs_against_the_demo(demo, tmp_path):
    clinician_key, physician_key = demo_token(demo, "clinician"), demo_token(demo, "physician")
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
            queue = doctor.get(f"{demo['url']}/api/v1/review-queue/", timeout=30).json()["results"]
            # The demo is shared with other tests' cases: this client's case only.
            items = [i for i in queue if i["patient_ref"] == "PSN-API-1"]
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
    # The signing notified the clinician by e-mail: the demo writes it where bin/demo says.
    assert f"Notification e-mails (written as files, never sent): {demo['data_dir']}/mail/" in demo["banner"]
    mails = "".join(p.read_text() for p in (demo["data_dir"] / "mail").glob("*.log"))
    assert "To: clinician@demo.invalid" in mails and "Subject: CancerWeb: case signed" in mails
    assert "PSN-API-1" not in mails  # no patient reference leaves by mail
