"""Reader studies with fixed personas: who may define and see a study, what a reader's
blinded worklist shows, and that a study read is never a clinical sign-off."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from accounts.models import AuditEvent, User
from diagnostics.models import ModelVersion, ReaderStudy, ReaderStudyRead, ReviewDecision, ReviewItem, Scan
from diagnostics.selectors.reader_studies import (
    _reader_order,
    reader_study_ai,
    reader_study_results,
    reader_worklist,
)
from diagnostics.services.reader_studies import (
    ReaderStudyError,
    reader_study_create,
    reader_study_read_record,
    reader_study_reference_set,
)
from diagnostics.services.reviews import reviewer_preference_set
from tests.factories import UserFactory, make_prediction, store_heatmap
from tests.helpers import api, image_bytes, login

pytestmark = pytest.mark.django_db

LABELS = ["I", "II", "III"]


def _lead(unit, username: str) -> User:  # type: ignore[no-untyped-def]
    """A physician granted the permission to define studies (a lead physician)."""
    user = UserFactory(username=username, role="physician", units=[unit] if unit else [])
    user.user_permissions.add(Permission.objects.get(codename="define_reader_study"))
    return User.objects.get(pk=user.pk)


@pytest.fixture
def world(clinician, physician, other_unit_clinician, other_unit_physician, admin_user, care_unit, other_unit):  # type: ignore[no-untyped-def]
    model = ModelVersion.objects.create(
        name="study", version="1", task="nodes", labels=LABELS, bundle_path="x", sha256="0" * 64, status="active"
    )
    second = UserFactory(
        username="second_reader", first_name="Sam", last_name="Second", role="physician", units=[care_unit]
    )
    predictions = [
        make_prediction(clinician, model, probs, ref=f"PSN-STUDY-{n}", color=(40 * n, 90, 120))
        for n, probs in enumerate([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])
    ]
    store_heatmap(predictions[0], image_bytes(color=(250, 0, 0)))
    foreign = make_prediction(other_unit_clinician, model, [0.2, 0.2, 0.6], ref="PSN-FOREIGN-STUDY")
    return {
        "model": model,
        "scans": [p.scan for p in predictions],
        "foreign_scan": foreign.scan,
        "readers": [User.objects.get(pk=physician.pk), second],
        "admin": User.objects.get(pk=admin_user.pk),
        "other_lead": _lead(other_unit, "other_lead"),
    }


def _study(world, arm: str = "unaided", scans: list[Scan] | None = None) -> ReaderStudy:  # type: ignore[no-untyped-def]
    return reader_study_create(
        acting_user=world["admin"],
        name="Node reproducibility",
        arm=arm,
        readers=world["readers"],
        scan_uuids=[s.uuid for s in (scans or world["scans"])],
    )


def test_defining_a_study_checks_who_and_which_scans(world, clinician, other_unit_physician, care_unit):  # type: ignore[no-untyped-def]
    admin = world["admin"]
    with pytest.raises(ReaderStudyError) as refused:
        reader_study_create(
            acting_user=admin,
            name="x",
            arm="unaided",
            readers=[world["readers"][0], other_unit_physician],
            scan_uuids=[world["scans"][0].uuid],
        )
    assert refused.value.code == "scan_not_visible"  # another unit's reader may not see unit A's scan
    with pytest.raises(ReaderStudyError) as refused:
        reader_study_create(
            acting_user=admin,
            name="x",
            arm="unaided",
            readers=[world["readers"][0], clinician],
            scan_uuids=[world["scans"][0].uuid],
        )
    assert refused.value.code == "reader_not_physician"
    with pytest.raises(PermissionDenied):  # a physician without the lead permission
        reader_study_create(
            acting_user=world["readers"][0],
            name="x",
            arm="unaided",
            readers=world["readers"],
            scan_uuids=[world["scans"][0].uuid],
        )
    with pytest.raises(ReaderStudyError) as refused:  # a lead physician of unit B over unit A's scans
        reader_study_create(
            acting_user=world["other_lead"],
            name="x",
            arm="unaided",
            readers=world["readers"],
            scan_uuids=[world["scans"][0].uuid],
        )
    assert refused.value.code == "scan_not_visible"
    lead = _lead(care_unit, "lead")
    with pytest.raises(ReaderStudyError) as refused:  # the owner sees every answer: not blind
        reader_study_create(
            acting_user=lead,
            name="x",
            arm="unaided",
            readers=[lead, world["readers"][0]],
            scan_uuids=[world["scans"][0].uuid],
        )
    assert refused.value.code == "owner_reads"
    assert not ReaderStudy.objects.exists()  # nothing half-written

    study = _study(world)
    assert study.labels == LABELS and study.task == "nodes"
    event = AuditEvent.objects.get(action="reader_study.create")
    assert event.object_id == str(study.uuid) and len(event.data["scans"]) == 3

    # The page refuses the same way, naming the problem.
    response = login(admin).post(
        reverse("study_new"),
        {
            "name": "y",
            "arm": "unaided",
            "readers": [world["readers"][0].pk, other_unit_physician.pk],
            "scans": str(world["scans"][0].uuid),
        },
    )
    assert response.status_code == 400 and "may not see scan" in response.content.decode()

    # An admin, who opens no case, can take a unit's most recent scans instead of ids.
    response = login(admin).post(
        reverse("study_new"),
        {
            "name": "Recent",
            "arm": "ai_shown",
            "readers": [r.pk for r in world["readers"]],
            "unit": care_unit.pk,
            "count": 2,
        },
    )
    assert response.status_code == 302
    recent = ReaderStudy.objects.get(name="Recent")
    assert set(recent.scans.all()) == set(world["scans"][1:])  # the two newest of unit A, not unit B's


def _worklist_pages(client, study: ReaderStudy) -> list[str]:  # type: ignore[no-untyped-def]
    first = client.get(reverse("study_read", args=[study.uuid]))
    assert first.status_code == 200
    n = len(re.findall(r'href="\?n=\d+"', first.content.decode()))
    return [client.get(reverse("study_read", args=[study.uuid]), {"n": i}).content.decode() for i in range(1, n + 1)]


SCAN_IMAGE = re.compile(r'src="/scans/([0-9a-f-]{36})/image.png"')


def test_unaided_reader_sees_only_the_studys_scans_and_no_ai_or_other_answer(world, clinician):  # type: ignore[no-untyped-def]
    study = _study(world, scans=world["scans"][:2])
    physician, second = world["readers"]
    reader_study_read_record(acting_user=second, study=study, scan_uuid=world["scans"][0].uuid, stage="III")

    pages = _worklist_pages(login(physician), study)
    shown = {m for page in pages for m in SCAN_IMAGE.findall(page)}
    assert shown == {str(s.uuid) for s in world["scans"][:2]}
    for page in pages:
        assert "heatmap" not in page and "AI's suggestion" not in page and "data-ai-stage" not in page
        assert "PSN-STUDY" not in page  # blinded: no case reference
        assert "your stage: III" not in page and "Your stage: <strong>" not in page  # not the other reader's
        assert 'data-stat="done">0<' in page
    entries = reader_worklist(user=physician, study=study)
    assert all(e.own_stage is None for e in entries)
    assert all(reader_study_ai(user=physician, study=study, scan=e.scan) is None for e in entries)
    # The other reader sees their own answer only.
    assert [e.own_stage for e in reader_worklist(user=second, study=study) if e.own_stage] == ["III"]

    # A study read is not a sign-off: no decision, the review item still pending, no result anywhere.
    scan = world["scans"][1]
    client = login(physician)
    url = reverse("study_read", args=[study.uuid])
    assert client.post(url, {"scan": str(scan.uuid), "stage": "III"}).status_code == 302
    assert client.post(url, {"scan": str(scan.uuid), "stage": "II"}).status_code == 400  # recorded once
    assert client.post(url, {"scan": str(world["scans"][0].uuid), "stage": "IV"}).status_code == 400
    assert client.post(url, {"scan": str(world["foreign_scan"].uuid), "stage": "I"}).status_code == 404
    assert list(ReaderStudyRead.objects.filter(reader=physician).values_list("stage", flat=True)) == ["III"]
    assert not ReviewDecision.objects.exists()
    assert set(ReviewItem.objects.values_list("status", flat=True)) == {"pending"}
    assert AuditEvent.objects.filter(action="reader_study.read", actor=physician).count() == 1
    assert api(clinician).get(f"/api/v1/scans/{scan.uuid}/").json()["result"] is None
    case_page = login(clinician).get(reverse("case_detail", args=[scan.case.uuid])).content.decode()
    assert "Awaiting review" in case_page and "III</strong>" not in case_page


@pytest.mark.django_db(False)
def test_each_reader_has_an_order_of_their_own_and_keeps_it():
    study = ReaderStudy(seed=12345)
    scans = [Scan(pk=n) for n in range(1, 21)]
    physician, second = User(pk=1), User(pk=2)
    first = [s.pk for s in _reader_order(study, physician, scans)]
    assert first == [s.pk for s in _reader_order(study, physician, list(reversed(scans)))]
    assert first != [s.pk for s in _reader_order(study, second, scans)]
    assert sorted(first) == list(range(1, 21)) and first != sorted(first)


def test_ai_shown_arm_shows_the_prediction_under_the_review_rules(world):  # type: ignore[no-untyped-def]
    study = _study(world, arm="ai_shown")
    physician = world["readers"][0]
    client = login(physician)
    pages = _worklist_pages(client, study)
    assert all("data-ai-stage=" in page for page in pages)
    heatmaps = [m for page in pages for m in re.findall(r'src="(/review/[0-9a-f-]{36}/heatmap.png)"', page)]
    assert len(heatmaps) == 1 and client.get(heatmaps[0]).status_code == 200
    # Blinded-first reading is the review rule: with it on, the AI's answer stays hidden here too.
    reviewer_preference_set(acting_user=physician, blinded_first=True)
    entries = reader_worklist(user=physician, study=study)
    assert all(reader_study_ai(user=physician, study=study, scan=e.scan) is None for e in entries)
    assert all("data-ai-stage=" not in page for page in _worklist_pages(client, study))


def test_statistics_page_csv_and_who_may_see_them(world, physician, other_unit_physician, clinician):  # type: ignore[no-untyped-def]
    physician, second = world["readers"]
    second.first_name = "=HYPERLINK(1)"
    second.save()
    study = _study(world)
    for reader, stages in ((physician, ["I", "II", "III"]), (second, ["I", "II", "II"])):
        for scan, stage in zip(world["scans"], stages, strict=True):
            reader_study_read_record(acting_user=reader, study=study, scan_uuid=scan.uuid, stage=stage)
    results = reader_study_results(study=study, replicates=200)
    pair = results.stats.pairs[0]
    # Observed [[1,0,0],[0,1,0],[0,1,0]]: p_o = 2/3; marginals (1,1,1) and (1,2,0), p_e = 1/3, kappa = 0.5.
    assert pair.kappa.value == pytest.approx(0.5)
    assert pair.confusion == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    # The AI says I, II, III; the majority leaves the tied third scan out: 2 of 2.
    ai = results.stats.versus_reference[-1]
    assert ai.rater is None and ai.agreement.value == pytest.approx(1.0) and ai.agreement.n == 2

    client = login(world["admin"])
    page = client.get(reverse("study_detail", args=[study.uuid]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Fleiss" in html and "95 % CI" in html and html.count('class="chart confusion"') == 4
    assert "<script" not in html.split("<main", 1)[1]
    assert AuditEvent.objects.filter(action="view", object_id=str(study.uuid)).exists()

    rows = list(csv.reader(io.StringIO(client.get(reverse("study_csv", args=[study.uuid])).content.decode())))
    assert rows[0] == ["section", "rater", "other", "statistic", "value", "ci_low", "ci_high", "n"]
    kappa = next(r for r in rows if r[0] == "pair" and r[3] == "cohen_kappa")
    assert float(kappa[4]) == pytest.approx(0.5) and kappa[7] == "3"
    assert kappa[2].startswith("'=HYPERLINK")  # a formula-looking name is made inert
    assert sum(1 for r in rows if r[0] == "read") == 7  # header row + six reads
    assert AuditEvent.objects.filter(action="reader_study.export").count() == 1

    reader_study_reference_set(acting_user=world["admin"], study=study, scan_uuid=world["scans"][2].uuid, stage="III")
    again = reader_study_results(study=study, replicates=200)
    assert again.stats.reference_kind == "adjudicated"
    assert [v.agreement.value for v in again.stats.versus_reference] == [1.0, 0.0, 1.0]
    with pytest.raises(ReaderStudyError):
        reader_study_reference_set(acting_user=world["admin"], study=study, scan_uuid=world["scans"][0].uuid, stage="V")

    # Foreign users: a lead physician whose study it is not, a physician who is not a reader.
    owner_pages = [reverse(n, args=[study.uuid]) for n in ("study_detail", "study_csv")]
    read_page = reverse("study_read", args=[study.uuid])
    other_lead = login(world["other_lead"])  # may define studies, but this one is not theirs
    for url in [*owner_pages, read_page]:
        assert other_lead.get(url).status_code == 404, url
    assert other_lead.post(reverse("study_reference", args=[study.uuid]), {}).status_code == 404
    assert login(other_unit_physician).get(read_page).status_code == 404  # not a reader
    assert login(world["admin"]).get(read_page).status_code == 403  # not a physician
    for url in owner_pages:
        assert login(physician).get(url).status_code == 403  # a reader, not a definer
        assert login(clinician).get(url).status_code == 403
    listing = login(world["other_lead"]).get(reverse("study_list")).content.decode()
    assert str(study.uuid) not in listing
