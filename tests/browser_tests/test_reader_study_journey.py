"""A reader study in Debian's headless Chromium: a physician reads in the blinded
worklist, the admin who defined the study opens its statistics. Both screens are
screenshotted and checked with axe-core (no serious or critical findings)."""

from __future__ import annotations

import re

import pytest

from accounts.models import User
from diagnostics.models import ModelVersion, ReaderStudy, ReaderStudyRead, ReviewDecision
from diagnostics.services.reader_studies import reader_study_create, reader_study_read_record
from tests.browser_tests.journeys import login, screen
from tests.factories import UserFactory, make_prediction
from tests.helpers import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LABELS = ["I", "II", "III"]
# Stage indices per scan; the physician's last one is given in the browser.
READS = {
    "physician": [0, 0, 1, 1, 2, 2, 0, 1],
    "rita": [0, 1, 1, 1, 2, 1, 0, 1],
    "sam": [0, 0, 1, 2, 2, 2, 1, 1],
}
AI = [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.5, 0.4], [0.1, 0.1, 0.8], [0.1, 0.3, 0.6],
      [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]]  # fmt: skip


def test_reader_reads_blind_and_the_owner_sees_agreement(
    live_server, browser, clinician, physician, admin_user, care_unit
):  # type: ignore[no-untyped-def]
    ModelVersion.objects.create(
        name="study", version="1", task="nodes", labels=LABELS, bundle_path="x", sha256="0" * 64, status="active"
    )
    readers = {
        "physician": User.objects.get(pk=physician.pk),
        "rita": UserFactory(
            username="rita", first_name="Rita", last_name="Reader", role="physician", units=[care_unit]
        ),
        "sam": UserFactory(username="sam", first_name="Sam", last_name="Second", role="physician", units=[care_unit]),
    }
    scans = [
        make_prediction(clinician, ModelVersion.objects.get(), probs, ref=f"PSN-RS-{n}", color=(30 * n, 120, 90)).scan
        for n, probs in enumerate(AI)
    ]
    study = reader_study_create(
        acting_user=User.objects.get(pk=admin_user.pk),
        name="Lymph-node staging reproducibility",
        arm="unaided",
        readers=list(readers.values()),
        scan_uuids=[s.uuid for s in scans],
    )
    # A fixed seed, so the screenshot's order and intervals are the same on every run.
    ReaderStudy.objects.filter(pk=study.pk).update(seed=2026)
    study.refresh_from_db()
    for name, stages in READS.items():
        for n, (scan, stage) in enumerate(zip(scans, stages, strict=True)):
            if name == "physician" and n == len(scans) - 1:
                continue  # read in the browser below
            reader_study_read_record(acting_user=readers[name], study=study, scan_uuid=scan.uuid, stage=LABELS[stage])

    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    login(page, live_server.url, "physician", PASSWORD)
    page.goto(f"{live_server.url}/studies/")
    page.click(f"text={study.name}")
    page.wait_for_selector("#study-read-form")
    text = page.inner_text("main")
    assert "You have read 7 of 8 scans" in text and "No AI output is shown" in text
    assert "PSN-RS" not in page.content() and "Rita" not in text
    # The scan's image is served to the reader (the same access rule as every scan).
    page.wait_for_function(
        "() => { const i = document.querySelector('img.study-image'); return i && i.complete && i.naturalWidth > 0; }"
    )
    screen(page, "50-physician-reader-study-worklist")
    page.check(f"input[name=stage][value='{LABELS[READS['physician'][-1]]}']")
    page.click("#study-read-submit")
    page.wait_for_selector(".study-finished")
    assert ReaderStudyRead.objects.filter(study=study).count() == 24
    assert not ReviewDecision.objects.exists()
    context.close()

    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    login(page, live_server.url, "admin", PASSWORD)
    page.goto(f"{live_server.url}/studies/{study.uuid}/")
    assert page.locator("svg.chart.confusion").count() == 3 + 4  # three pairs, three readers and the AI
    fleiss = page.inner_text("[data-stat=fleiss]")
    # By hand: P-bar = 2/3; category shares 7/24, 11/24, 6/24, P-e = 206/576; kappa = 0.481.
    assert re.match(r"0\.481 \(95 % CI -?\d\.\d{3} to \d\.\d{3}\)", fleiss), fleiss
    screen(page, "51-admin-reader-study-statistics")
    figures = {
        "fleiss": fleiss,
        "pairs": [
            (row.locator("th").inner_text(), row.locator("[data-stat=kappa]").inner_text(),
             row.locator("[data-stat=weighted]").inner_text())
            for row in page.locator("table.pairs tbody tr").all()
        ],
        "versus": [
            (row.locator("th").inner_text(), row.locator("[data-stat=agreement]").inner_text(),
             row.locator("[data-stat=kappa]").inner_text())
            for row in page.locator("table.versus tbody tr").all()
        ],
    }  # fmt: skip
    # Physician and Rita: observed [[2,1,0],[0,3,0],[0,1,1]], p_o = 6/8, p_e = 23/64, kappa = 0.610.
    assert figures["pairs"][0][0] == "Peter Physician · Rita Reader" and figures["pairs"][0][1].startswith("0.610")
    assert figures["versus"][-1][0] == "AI" and figures["versus"][-1][1].startswith("0.875")  # 7 of 8
    print("READER STUDY FIGURES", figures)
    context.close()
