"""The embedded default under a burst: bin/demo (SQLite, the filesystem broker, its
worker storing predictions meanwhile) answers 20 parallel API uploads and thumbnail
loads without one 503 ("database is locked"); its beat runs the job sweeper, which
puts back a job left running past its deadline."""

from __future__ import annotations

import io
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.utils import timezone
from PIL import Image

from tests.api_tests.conftest import demo_token

pytestmark = [pytest.mark.worker]

PARALLEL = 20


def _png(n: int) -> bytes:
    img = Image.new("RGB", (96, 96), (n * 11 % 256, 90, 200 - n))
    for x in range(0, 96, 5):
        img.putpixel((x, (x * n) % 96), (10, 200, 30))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _session() -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=PARALLEL)
    session.mount("http://", adapter)
    return session


def _browser_login(base: str, username: str, password: str) -> requests.Session:
    browser = _session()
    page = browser.get(f"{base}/accounts/login/", timeout=30)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert csrf, page.text[:500]
    done = browser.post(
        f"{base}/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": csrf.group(1)},
        headers={"Referer": f"{base}/accounts/login/"},
        timeout=30,
    )
    assert done.url.rstrip("/").endswith("/cases"), done.url
    return browser


def test_demo_answers_parallel_uploads_and_thumbnails_without_a_503(demo: dict[str, Any]) -> None:
    base = demo["url"]
    api = _session()
    api.headers["Authorization"] = f"Token {demo_token(demo, 'clinician')}"
    case = api.post(
        f"{base}/api/v1/cases/",
        json={"patient_ref": "PSN-BURST-1", "body_site": "lymph node", "task": "Lymph-node metastasis in H&E patches"},
        timeout=30,
    )
    assert case.status_code == 201, case.text
    case_id = case.json()["id"]
    first = api.post(f"{base}/api/v1/cases/{case_id}/scans/", files=[("files", ("first.png", _png(0)))], timeout=60)
    assert first.status_code == 201, first.text
    # The thumbnail the case page shows for a scan (a page URL: the browser's session).
    image_path = f"/scans/{first.json()['created'][0]['id']}/image.png"
    browser = _browser_login(base, "clinician", demo["password"])

    def upload(n: int) -> requests.Response:
        return api.post(
            f"{base}/api/v1/cases/{case_id}/scans/", files=[("files", (f"burst-{n}.png", _png(n)))], timeout=120
        )

    def load_thumbnail(_: int) -> requests.Response:
        return browser.get(f"{base}{image_path}", timeout=120)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2 * PARALLEL) as pool:
        uploads = [pool.submit(upload, n) for n in range(1, PARALLEL + 1)]
        thumbnails = [pool.submit(load_thumbnail, n) for n in range(PARALLEL)]
        upload_answers = [f.result() for f in uploads]
        thumbnail_answers = [f.result() for f in thumbnails]
    statuses = [r.status_code for r in upload_answers + thumbnail_answers]
    print(
        f"DEMO BURST: {PARALLEL} uploads + {PARALLEL} thumbnails in {time.monotonic() - started:.1f} s: "
        f"{statuses.count(503)} x 503, statuses {sorted(set(statuses))}"
    )
    assert statuses.count(503) == 0, [r.text[:200] for r in upload_answers + thumbnail_answers if r.status_code >= 500]
    assert [r.status_code for r in upload_answers] == [201] * PARALLEL, [r.text[:200] for r in upload_answers]
    assert [r.status_code for r in thumbnail_answers] == [200] * PARALLEL
    assert all(r.headers["Content-Type"] == "image/png" for r in thumbnail_answers)
    scans = api.get(f"{base}/api/v1/cases/{case_id}/", timeout=30).json()["scans"]
    assert len(scans) == PARALLEL + 1

    # A job whose worker was lost: still `running`, long past the running deadline. The
    # demo's beat (worker -B) runs the sweeper, which puts it back in the queue (audited).
    job_uuid = first.json()["created"][0]["job"].replace("-", "")
    long_ago = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    # Wait until the worker is done with it (on a loaded machine its first job also loads
    # the model): faking a job the worker still holds would race it, and the worker's
    # store would rightly mark it succeeded under the sweeper.
    deadline = time.monotonic() + 180
    status = ""
    while status != "succeeded":
        assert time.monotonic() < deadline, f"the first job is still {status!r}"
        time.sleep(1)
        with sqlite3.connect(demo["data_dir"] / "db.sqlite3", timeout=30) as db:
            status = db.execute("SELECT status FROM diagnostics_inferencejob WHERE uuid = ?", (job_uuid,)).fetchone()[0]
    with sqlite3.connect(demo["data_dir"] / "db.sqlite3", timeout=30) as db:
        # Lost before it stored anything: no prediction, no review item (a job that has a
        # stored prediction is done, and a late message for it rightly marks it so).
        job_id = db.execute("SELECT id FROM diagnostics_inferencejob WHERE uuid = ?", (job_uuid,)).fetchone()[0]
        prediction = "SELECT id FROM diagnostics_prediction WHERE job_id = ?"
        db.execute(f"DELETE FROM diagnostics_reviewitem WHERE prediction_id IN ({prediction})", (job_id,))  # noqa: S608
        db.execute("DELETE FROM diagnostics_prediction WHERE job_id = ?", (job_id,))
        db.execute(
            "UPDATE diagnostics_inferencejob SET status = 'running', started_at = ? WHERE id = ?",
            (long_ago, job_id),
        )
    # The demo has one worker process for both queues: the sweep (on `default`) waits
    # until the burst's other inference jobs are done, on a loaded CI machine for a minute or more.
    deadline = time.monotonic() + 180
    requeued = 0
    while not requeued:
        assert time.monotonic() < deadline, "the demo's sweeper did not put the stuck job back"
        time.sleep(1)
        with sqlite3.connect(demo["data_dir"] / "db.sqlite3", timeout=30) as db:
            requeued = db.execute(
                "SELECT count(*) FROM accounts_auditevent WHERE action = 'job.requeue' AND object_id = ?",
                (first.json()["created"][0]["job"],),
            ).fetchone()[0]
