"""Whole slides from upload to "awaiting review", through the product as deployed: a
`bin/cluster` cluster (PostgreSQL, Redis, SeaweedFS, one gunicorn web host, one
worker host), the tus API and a real Celery worker. Prints, per slide: the upload's
wall time, the check (reassembly, OpenSlide probe, label removal, storage), the slide
job, the total from the first byte sent to "awaiting review", and the worker's peak
resident memory (a fresh worker process per slide, so each figure is that slide's).

    .venv/bin/python bench/bench_slide_upload.py ../shared/data/slides/slide-01.tiff \
        /tmp/large-80x60.tiff /tmp/large-160x120.tiff

Large slides come from make_slide.py (see bench_slides.py).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.cluster import Cluster  # noqa: E402 (after the path is set)

TASK = "Lymph-node metastasis in H&E patches"
TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 8 * 1024 * 1024  # the server's default CANCERWEB_SLIDE_CHUNK_BYTES


def _peak_rss_mb(worker_pid: int) -> float:
    """VmHWM of the worker's pool children (the process that ran the job)."""
    peak = 0.0
    for child in Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split():
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def _wait(fn: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"gave up waiting for {what}")


def one_slide(cluster: Cluster, http: requests.Session, path: Path, n: int) -> dict[str, Any]:
    base = cluster.web_urls[0]
    data = path.read_bytes()
    case = http.post(f"{base}/api/v1/cases/", json={"patient_ref": f"PSN-BENCH-{n}", "body_site": "lymph node",
                                                    "task": TASK})  # fmt: skip
    case.raise_for_status()
    t0 = time.monotonic()
    meta = f"filename {base64.b64encode(path.name.encode()).decode()}"
    created = http.post(f"{base}/api/v1/cases/{case.json()['id']}/slide-uploads/",
                        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta})  # fmt: skip
    assert created.status_code == 201, created.text
    url = requests.compat.urljoin(base, created.headers["Location"])
    offset = 0
    while offset < len(data):
        answer = http.patch(url, data=data[offset : offset + CHUNK],
                            headers={**TUS, "Upload-Offset": str(offset),
                                     "Content-Type": "application/offset+octet-stream"})  # fmt: skip
        assert answer.status_code == 204, answer.text
        offset = int(answer.headers["Upload-Offset"])
    finish = http.post(url + "finish/", json={"sha256": hashlib.sha256(data).hexdigest()})
    assert finish.status_code == 202, finish.text
    t_sent = time.monotonic()

    def accepted() -> dict[str, Any] | None:
        body = http.get(url).json()
        assert body["status"] != "refused", body
        return body if body["status"] == "accepted" else None

    upload = _wait(accepted, timeout=600, what="the slide check")
    t_checked = time.monotonic()

    def succeeded() -> dict[str, Any] | None:
        body = http.get(f"{base}/api/v1/jobs/{upload['job']}/").json()
        assert body["status"] != "failed", body
        return body if body["status"] == "succeeded" else None

    job = _wait(succeeded, timeout=1800, what="the slide job")
    t_done = time.monotonic()
    return {
        "slide": path.name,
        "bytes": len(data),
        "tiles": job.get("tiles_total"),
        "upload_s": t_sent - t0,
        "check_s": t_checked - t_sent,
        "job_s": t_done - t_checked,
        "total_s": t_done - t0,
        "worker_peak_rss_mb": _peak_rss_mb(cluster.pids["worker1"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("slides", nargs="+", type=Path)
    args = parser.parse_args()
    # Large slides on CPU take longer than the default 300 s task limit allows.
    os.environ.setdefault("CELERY_TASK_HARD_TIME_LIMIT", "1800")
    root = Path(tempfile.mkdtemp(prefix="cancerweb-slide-bench-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
    print(f"starting a cluster (1 web host, 1 worker host) in {root} ...", flush=True)
    cluster = Cluster(root=str(root), web=1, workers=1, users=2)
    cluster.start()
    try:
        http = requests.Session()
        http.headers["Authorization"] = f"Token {next(iter(cluster.logins['clinicians'].values()))}"
        for n, path in enumerate(args.slides, 1):
            if n > 1:  # a fresh worker process, so the peak memory is this slide's own
                cluster.kill("worker1", sig=15)
                cluster.start_worker("worker1")
            r = one_slide(cluster, http, path, n)
            print(
                f"{r['slide']}: {r['bytes'] / 1e6:.1f} MB, {r['tiles']} tissue tiles: upload {r['upload_s']:.1f} s, "
                f"check {r['check_s']:.1f} s, slide job {r['job_s']:.1f} s; upload -> awaiting review "
                f"{r['total_s']:.1f} s; worker peak RSS {r['worker_peak_rss_mb']:.0f} MB",
                flush=True,
            )
        print(f"load average after: {os.getloadavg()}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
