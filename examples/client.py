"""Upload a scan to CancerWeb, wait for the model, wait for a physician's signature
and print the signed result.

    CANCERWEB_URL=http://127.0.0.1:8000 CANCERWEB_TOKEN=cw_... python examples/client.py samples/pcam-metastasis-1.jpg
"""

import os
import sys
import time

import requests

API = os.environ.get("CANCERWEB_URL", "http://127.0.0.1:8000").rstrip("/") + "/api/v1"
session = requests.Session()
session.headers["Authorization"] = f"Token {os.environ['CANCERWEB_TOKEN']}"


def call(method, path, **kwargs):
    response = session.request(method, API + path, timeout=60, **kwargs)
    if response.status_code >= 400:
        error = response.json()["error"]  # every 4xx has this shape, with a stable code
        sys.exit(f"{response.status_code} {error['code']}: {error['message']} {error.get('fields', '')}")
    return response.json()


def wait_for(path, done, seconds):
    deadline = time.monotonic() + seconds
    while not done(found := call("GET", path)):
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting for {path}")
        time.sleep(2)
    return found


image = sys.argv[1]
case = call(
    "POST",
    "/cases/",
    json={
        "patient_ref": os.environ.get("PATIENT_REF", "PSN-API-1"),
        "body_site": "lymph node",
        "task": os.environ.get("TASK", "Lymph-node metastasis in H&E patches"),
    },
)
with open(image, "rb") as fh:
    upload = call("POST", f"/cases/{case['id']}/scans/", files=[("files", (os.path.basename(image), fh))])
scan = (upload["created"] or upload["repeated"])[0]
print(f"case {case['id']}: uploaded scan {scan['id']}, inference job {scan['job']} is {scan['status']}")

job = wait_for(f"/jobs/{scan['job']}/", lambda j: j["status"] in ("succeeded", "failed"), seconds=600)
if job["status"] == "failed":
    sys.exit(f"inference failed: {job['error']} (POST /api/v1/jobs/{job['id']}/retry/ queues it again)")
print("the model has run; waiting for a physician to review and sign")

scan = wait_for(f"/scans/{scan['id']}/", lambda s: s["result"] is not None, seconds=int(os.environ.get("WAIT", "3600")))
result = scan["result"]
print(f"signed result: {result['stage']} ({result['meaning']}) by {result['signer_name']} at {result['signed_at']}")
