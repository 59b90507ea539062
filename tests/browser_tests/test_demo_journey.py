"""The README's first command, tried as a new user would, in real Chromium:
bin/demo starts (SQLite, filesystem broker, bundled model, one worker); the
clinician uploads, watches the status change without reloading, the physician
rejects with a stage and a reason, the clinician sees the signed stage."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.browser_tests.conftest import ROOT, shot

pytestmark = [pytest.mark.browser]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY")}
    env.update({"PORT": str(port), "CANCERWEB_DATA_DIR": str(tmp_path / "demo")})
    out = (tmp_path / "demo.out").open("w")
    proc = subprocess.Popen(
        ["bin/demo"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 240
    text = ""
    while "Stop with Ctrl-C" not in text:
        text = (tmp_path / "demo.out").read_text()
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"bin/demo did not come up:\n{text[-3000:]}")
        time.sleep(0.5)
    password = re.search(r"password for all three: (\S+)\)", text)
    assert password, text
    assert f"http://127.0.0.1:{port}/" in text
    yield {"url": f"http://127.0.0.1:{port}", "password": password.group(1), "banner": text}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    out.close()


def _login(page, base: str, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button:has-text('Log in')")


def _logout(page) -> None:  # type: ignore[no-untyped-def]
    page.click("button:has-text('Log out')")
    page.wait_for_url("**/accounts/login/")


def test_demo_journey_in_chromium(demo, browser):  # type: ignore[no-untyped-def]
    base, password = demo["url"], demo["password"]
    for role in ("clinician", "physician", "admin"):
        assert role in demo["banner"]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()

    # Clinician: create a case with two sample patches.
    _login(page, base, "clinician", password)
    page.wait_for_url("**/cases/")
    shot(page, "01-clinician-cases-empty")
    page.click("text=New case >> nth=-1")
    page.fill("#id_patient_ref", "PSN-DEMO-1")
    page.fill("#id_body_site", "sentinel lymph node")
    # Two tasks have an active model in the demo; these patches are lymph-node sections.
    page.select_option("#id_task", label="Lymph-node metastasis in H&E patches")
    page.set_input_files(
        "#id_files", [str(ROOT / "samples/pcam-metastasis-1.jpg"), str(ROOT / "samples/pcam-no-metastasis-1.jpg")]
    )
    shot(page, "02-clinician-new-case")
    page.click("button:has-text('Create case and upload')")
    page.wait_for_url(re.compile(r".*/cases/[0-9a-f-]{36}/$"))
    case_url = page.url
    shot(page, "03-clinician-case-queued")
    # No reload: the page's polling moves both rows to "Awaiting review".
    # (A locator wait, not wait_for_function: the site's CSP forbids the eval that uses.)
    page.locator(".status-awaiting_review").nth(1).wait_for(timeout=180_000)
    assert page.locator(".status-awaiting_review").count() == 2
    assert page.url == case_url
    assert page.locator(".status-summary").inner_text() == "Awaiting review"
    shot(page, "04-clinician-case-awaiting-review")

    # A bad file is refused with a message that names it.
    page.set_input_files(
        "#id_files", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all"}]
    )
    page.click("button:has-text('Upload')")
    # Each file is sent on its own; the server's refusal appears in the file's row.
    page.wait_for_selector("text=notes.png: the content is not an accepted image type")
    shot(page, "05-clinician-bad-upload")
    _logout(page)

    # Physician: queue, open the first item, reject with a stage and a reason.
    _login(page, base, "physician", password)
    page.wait_for_url("**/review/")
    assert page.locator("#review-rows tbody tr").count() == 2
    shot(page, "06-physician-queue")
    page.click("#review-rows tbody tr >> nth=0 >> a")
    page.wait_for_url(re.compile(r".*/review/[0-9a-f-]{36}/$"))
    predicted = page.locator(".predicted").inner_text()
    options = [o for o in page.locator("#id_stage option").all_inner_texts() if o not in ("—", predicted)]
    shot(page, "07-physician-review-item")
    # The worker's Grad-CAM map is a layer of the viewer; the checkbox hides and shows
    # it and the slider (driven by the keyboard) sets its opacity.
    page.wait_for_selector("#viewer[data-heatmap-loaded='1']", timeout=30_000)
    assert page.get_attribute("#viewer", "data-heatmap-visible") == "1"
    page.focus("#heatmap-toggle")
    page.keyboard.press("Space")
    assert page.get_attribute("#viewer", "data-heatmap-visible") == "0"
    page.keyboard.press("Space")
    assert page.get_attribute("#viewer", "data-heatmap-visible") == "1"
    before = page.input_value("#heatmap-opacity")
    page.focus("#heatmap-opacity")
    page.keyboard.press("ArrowRight")
    assert int(page.input_value("#heatmap-opacity")) == int(before) + 5
    shot(page, "07b-physician-heatmap-overlay")
    page.check("input[name=outcome][value=rejected]")
    page.select_option("#id_stage", options[0])
    page.fill("#id_reason", "morphology does not support the suggestion")
    page.fill("#id_password", password)
    page.click("button:has-text('Sign decision')")
    page.wait_for_load_state()
    assert "Decision signed." in page.content()
    shot(page, "08-physician-after-sign")
    _logout(page)

    # Clinician sees the physician's signed stage, name and time.
    _login(page, base, "clinician", password)
    page.goto(case_url)
    signed = page.locator(".signed-stage")
    assert signed.count() == 1
    assert signed.inner_text() == options[0]
    assert "signed by Peter Physician" in page.content()
    shot(page, "09-clinician-signed-result")
    context.close()
