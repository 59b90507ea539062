"""Smoke test of bin/cluster's cluster (devtools/cluster.py): what works there works
across machines, because its hosts share no folder. An upload on one web host is
predicted by a worker host that has no copy of the scan or the model except what it
fetched from SeaweedFS, seen and signed on the other web host; with one worker host
killed, the other carries on."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devtools.cluster import Cluster
from tests.helpers import SAMPLES

pytestmark = [pytest.mark.cluster]
TASK = "Lymph-node metastasis in H&E patches"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="cancerweb-cluster-test-"))
    c = Cluster(root=str(root), users=1)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def _session(token: str) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Token {token}"
    return s


def _upload(clinician: requests.Session, web: str, name: str) -> dict:
    case = clinician.post(f"{web}/api/v1/cases/", json={"patient_ref": f"PSN-{name.upper()}", "body_site": "lymph node",
                                                        "task": TASK}, timeout=60)  # fmt: skip
    assert case.status_code == 201, case.text
    # The sample the demo model calls metastasis with the most confidence (0.98): the test
    # is about the hosts, not about a borderline patch.
    with (SAMPLES / "pcam-metastasis-2.jpg").open("rb") as fh:
        files = [("files", (f"{name}.jpg", fh, "image/jpeg"))]
        upload = clinician.post(f"{web}/api/v1/cases/{case.json()['id']}/scans/", files=files, timeout=60)
    assert upload.status_code == 201, upload.text
    return upload.json()["created"][0]


def _wait_job(session: requests.Session, web: str, job: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = session.get(f"{web}/api/v1/jobs/{job}/", timeout=60).json()
        if found["status"] in ("succeeded", "failed"):
            return found
        time.sleep(0.5)
    raise AssertionError(f"job {job} did not finish in {timeout} s")


def test_hosts_that_share_no_folder_upload_predict_review_and_survive_a_lost_worker_host(cluster: Cluster) -> None:
    web1, web2 = cluster.web_urls
    clinician = _session(next(iter(cluster.logins["clinicians"].values())))
    physician = _session(next(iter(cluster.logins["physicians"].values())))
    scan = _upload(clinician, web1, "c1")
    job = _wait_job(clinician, web2, scan["job"])  # the other web host sees the same job
    assert job["status"] == "succeeded", job
    hosts = cluster.path / "hosts"
    for worker in ("worker1", "worker2"):
        # Each worker host fetched the model bundles into its own cache; no host ever
        # had a scans folder: the scan reached the worker through the object store only.
        assert any((hosts / worker / "model-cache").glob("*/model.keras")), worker
        assert not (hosts / worker / "scans-unused").exists()
        assert not any((hosts / worker / "models").iterdir())
    queue = physician.get(f"{web2}/api/v1/review-queue/", timeout=60).json()["results"]
    item = next(i for i in queue if i["scan"] == scan["id"])
    decision = {"outcome": "confirmed", "password": cluster.logins["password"]}
    signed = physician.post(f"{web2}/api/v1/review-items/{item['id']}/decisions/", json=decision, timeout=60)
    assert signed.status_code == 201, signed.text
    assert clinician.get(f"{web1}/api/v1/scans/{scan['id']}/", timeout=60).json()["result"]["stage"] == "metastasis"
    health = requests.get(f"{web1}/health/", headers={"Authorization": f"Bearer {cluster.secrets['monitoring']}"},
                          timeout=60)  # fmt: skip
    assert health.status_code == 200, health.text

    cluster.kill("worker1")  # a whole worker host lost; the other carries on alone
    later = _upload(clinician, web2, "c2")
    assert _wait_job(clinician, web1, later["job"])["status"] == "succeeded"
