"""Pull mode: CancerWeb searches the PACS with QIDO-RS (the account's modality and study
description filter) and retrieves new studies with WADO-RS; a study seen twice makes
one case; a search answer that is not JSON is refused with a clear reason."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from diagnostics.models import Case, Exchange, Scan
from diagnostics.services import integration as svc
from tests.integration_tests.conftest import study_bytes


def test_new_matching_studies_are_pulled_once(integration, pacs):
    account, _ = integration
    study_uid, instances = study_bytes(2)
    for data in instances:
        pacs.upload(data)
    _, (other,) = study_bytes(1, StudyDescription="HEAD MR")  # outside the filter
    pacs.upload(other)

    report = svc.studies_pull(account=account)
    assert (report.studies_seen, report.instances_stored, report.errors) == (1, 2, [])
    case = Case.objects.get()
    assert case.scans.count() == 2
    assert svc.study_identifiers(case.study_link)["study_uid"] == study_uid

    again = svc.studies_pull(account=account)  # nothing new: skipped without a retrieve
    assert (again.studies_seen, again.studies_retrieved, again.instances_stored) == (1, 0, 0)
    from tests.diagnostics_tests.dicom_factory import dicom_bytes

    pacs.upload(dicom_bytes(extra={"StudyInstanceUID": study_uid, "StudyDescription": "CHEST CT"}))
    call_command("dicomweb_pull")  # the command: the study grew by one instance
    assert Case.objects.count() == 1 and Scan.objects.count() == 3
    received = Exchange.objects.filter(channel="pull", state="received")
    assert sorted(e.detail["repeated"] for e in received) == [False, False, False, True, True]  # 2, then 1 new + 2


class _HtmlHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  (the http.server API)
        body = b"<html><body>Login required</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_search_answer_that_is_not_json_is_refused_with_a_reason(integration):
    account, _ = integration
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        account.dicomweb_url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        account.save()
        report = svc.studies_pull(account=account)
        assert report.errors == ["the PACS answered the QIDO-RS search with something that is not DICOM JSON"]
        assert not Case.objects.exists()
        refused = Exchange.objects.get(channel="pull")
        assert refused.state == "refused" and refused.detail["code"] == "qido_not_json"
        with pytest.raises(CommandError, match="some pulls failed"):
            call_command("dicomweb_pull", account=account.name)
    finally:
        server.shutdown()
