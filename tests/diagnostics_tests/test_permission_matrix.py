"""Every page × every persona × own, foreign and missing objects.

The pages come from walking the URL configuration, so a new view fails
`test_every_url_is_in_the_matrix` until its expected answers are written here.
Django's own admin site (namespace "admin") has its own staff checks and is left out.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import User
from diagnostics.models import ModelVersion, ReaderStudy
from diagnostics.selectors.cases import cases_for_user
from diagnostics.selectors.reviews import review_queue
from tests.factories import make_prediction
from tests.helpers import login

pytestmark = pytest.mark.django_db

PERSONAS = ["anonymous", "clinician", "other_unit_clinician", "physician", "other_unit_physician", "admin_user"]
OBJECTS = ["own", "foreign", "missing"]  # "own": in unit A (clinician, physician); "foreign": unit B


def _walk(patterns: list[Any], namespace: str = "") -> Iterator[tuple[str, URLPattern]]:
    for p in patterns:
        if isinstance(p, URLResolver):
            if p.namespace == "admin":
                continue
            yield from _walk(p.url_patterns, p.namespace or namespace)
        elif isinstance(p, URLPattern) and p.name:
            yield (f"{namespace}:{p.name}" if namespace else p.name), p


def page_url_names() -> dict[str, URLPattern]:
    """Pages only: the REST API's endpoints have their own persona matrix, held
    complete by tests/api_tests/test_access.py::test_every_api_url_is_in_the_matrix."""
    return {name: p for name, p in url_names().items() if not name.startswith("api_")}


def url_names() -> dict[str, URLPattern]:
    return dict(_walk(get_resolver().url_patterns))


# Which object kind each URL takes (None: no object).
OBJECT_KIND = {
    "home": None,
    "case_list": None,
    "case_new": None,
    "case_detail": "case",
    "case_status": "case",
    "case_images": "case",
    "case_upload": "case",
    "scan_image": "scan",
    "scan_thumbnail": "scan",
    "review_queue": None,
    "review_detail": "item",
    "login": None,
    "logout": None,
    "otp_setup": None,
    "otp_verify": None,
    "audit_list": None,
    "audit_export": None,
    "lockouts": None,
    "case_upload_file": "case",
    "review_heatmap": "item",
    "job_retry": "job",
    "health": None,
    "metrics": None,
    "review_settings": None,
    "review_blinded": "item",
    "model_card": "model",
    "notification_list": None,
    "notification_read": None,
    "notification_open": "item",  # a notification's uuid: none of these ids is one
    "dashboard": None,
    "dashboard_csv": None,
    "slide_dzi": "scan",
    "slide_tile": "scan",
    "slide_region": "item",
    "study_list": None,
    "study_new": None,
    "study_detail": "study",
    "study_csv": "study",
    "study_reference": "study",
    "study_read": "study",
}
# Arguments after the object's id.
EXTRA_ARGS: dict[str, list[int]] = {"slide_tile": [0, 0, 0], "slide_region": [1]}
POST_ONLY = {"case_upload", "case_upload_file", "review_blinded", "notification_read", "job_retry", "study_reference"}

UNIT_A = {"clinician", "physician"}
UNIT_B = {"other_unit_clinician", "other_unit_physician"}
UPLOADERS = UNIT_A | UNIT_B  # clinicians and physicians hold the upload role
REVIEWERS = {"physician", "other_unit_physician"}


def expected(name: str, persona: str, obj: str | None) -> int:
    """The status each persona gets: anonymous → login, wrong role → 403, an object
    outside the persona's units or missing → 404."""
    if name in ("health", "metrics"):
        # Monitoring answers by address (this machine) or token, not by session: the test
        # client comes from 127.0.0.1. No worker heartbeat here, so health says 503.
        return 503 if name == "health" else 200
    if name == "login":
        return 200
    if name == "logout":
        return 405  # GET; logging out is a POST
    if persona == "anonymous":
        return 302
    if name == "home":
        return 302
    if name in ("otp_setup", "otp_verify"):
        # Physicians and the admin were verified with an enrolled device: setup sends
        # them to verify (200). Clinicians have none: verify sends them to setup (200).
        with_device = persona in REVIEWERS or persona == "admin_user"
        return {("otp_setup", True): 302, ("otp_verify", True): 200}.get(
            (name, with_device), 302 if name == "otp_verify" else 200
        )
    if name == "notification_list":
        return 200
    if name == "notification_open":
        return 404  # only one's own notifications open
    if name == "notification_read":
        return 302
    if name == "model_card":
        # The registry's metadata, for every signed-in user (same rule as /api/v1/models/).
        return 404 if obj == "missing" else 200
    if name in ("dashboard", "dashboard_csv"):
        if persona not in REVIEWERS and persona != "admin_user":
            return 403
        return 200
    if name == "study_list":
        return 200 if persona in REVIEWERS or persona == "admin_user" else 403
    if name == "study_new":
        return 200 if persona == "admin_user" else 403
    if name in ("study_detail", "study_csv", "study_reference"):
        # The admin defined both studies; only a definer sees statistics, only its owner this one.
        if persona != "admin_user":
            return 403
        if obj == "missing":
            return 404
        return 400 if name == "study_reference" else 200  # an empty reference form is refused
    if name == "review_settings":
        return 200 if persona in REVIEWERS else 403
    if name in ("audit_list", "audit_export", "lockouts"):
        return 200 if persona == "admin_user" else 403
    if name in ("case_list", "case_new"):
        return 200 if persona in UPLOADERS else 403
    if name == "review_queue":
        return 200 if persona in REVIEWERS else 403
    visible = (obj == "own" and persona in UNIT_A) or (obj == "foreign" and persona in UNIT_B)
    if name in ("case_detail", "case_status", "case_images", "case_upload", "case_upload_file"):
        if persona not in UPLOADERS:
            return 403
        if not visible:
            return 404
        # An upload without files is refused, naming the problem.
        return 400 if name in ("case_upload", "case_upload_file") else 200
    if name == "job_retry":
        if persona not in UPLOADERS:
            return 403
        return 409 if visible else 404  # these jobs have not failed: nothing to retry
    if name == "review_heatmap":
        return 403 if persona not in REVIEWERS else 404  # these predictions have no heat map stored
    if name == "review_blinded":
        if persona not in REVIEWERS:
            return 403
        return 400 if visible else 404  # an empty blinded read is refused
    if name in ("scan_image", "scan_thumbnail"):
        return 200 if visible else 404
    if name in ("slide_dzi", "slide_tile"):
        return 404  # the world's scans are images, not slides (tests/slides_tests open real slides)
    if name == "slide_region":
        return 403 if persona not in REVIEWERS else 404  # the regions of a slide's prediction only
    if name == "study_read":
        if persona not in REVIEWERS:
            return 403
        return 200 if visible else 404  # each unit's physician reads in their unit's study only
    if name == "review_detail":
        if persona not in REVIEWERS:
            return 403
        return 200 if visible else 404
    raise AssertionError(f"no expectation for {name}")


def test_every_url_is_in_the_matrix():
    assert set(page_url_names()) == set(OBJECT_KIND), "add the new view's expected answers to this matrix"


@pytest.fixture
def world(request, three_label_model):  # type: ignore[no-untyped-def]
    clinician = request.getfixturevalue("clinician")
    other = request.getfixturevalue("other_unit_clinician")
    users = {p: request.getfixturevalue(p) for p in PERSONAS if p != "anonymous"}
    own = make_prediction(clinician, three_label_model, [0.1, 0.2, 0.7], ref="PSN-OWN")
    foreign = make_prediction(other, three_label_model, [0.6, 0.3, 0.1], ref="PSN-FOREIGN", color=(10, 10, 200))
    own_study = _study(users["admin_user"], users["physician"], own.scan)
    foreign_study = _study(users["admin_user"], users["other_unit_physician"], foreign.scan)
    objects = {
        "own": {
            "study": own_study.uuid,
            "case": own.scan.case.uuid,
            "scan": own.scan.uuid,
            "item": own.review_item.uuid,
            "prediction": own.uuid,
            "model": three_label_model.uuid,
            "job": own.job.uuid,
        },
        "foreign": {
            "study": foreign_study.uuid,
            "case": foreign.scan.case.uuid,
            "scan": foreign.scan.uuid,
            "item": foreign.review_item.uuid,
            "prediction": foreign.uuid,
            "model": three_label_model.uuid,
            "job": foreign.job.uuid,
        },
        "missing": {k: uuid.uuid4() for k in ("case", "scan", "item", "prediction", "model", "job", "study")},
    }
    return users, objects


def _study(owner: User, reader: User, scan: Any) -> ReaderStudy:
    study = ReaderStudy.objects.create(name="m", arm="unaided", task="t", labels=["I", "II", "III"], created_by=owner)
    study.readers.set([reader])
    study.scans.set([scan])
    return study


@pytest.fixture
def three_label_model(db) -> ModelVersion:  # type: ignore[no-untyped-def]
    return ModelVersion.objects.create(
        name="matrix", version="1", task="t", labels=["I", "II", "III"], bundle_path="x", sha256="0" * 64
    )


def _client(users: dict[str, User], persona: str) -> Client:
    return Client() if persona == "anonymous" else login(users[persona])


def _cases() -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for name, kind in OBJECT_KIND.items():
        out.extend((name, obj) for obj in OBJECTS) if kind else out.append((name, None))
    return out


@pytest.mark.parametrize("persona", PERSONAS)
def test_matrix(world, persona):  # type: ignore[no-untyped-def]
    users, objects = world
    client = _client(users, persona)
    failures = []
    for name, obj in _cases():
        kind = OBJECT_KIND[name]
        url = reverse(name, args=[objects[obj][kind], *EXTRA_ARGS.get(name, [])]) if kind and obj else reverse(name)
        response = client.post(url, {}) if name in POST_ONLY else client.get(url)
        want = expected(name, persona, obj)
        if response.status_code != want:
            failures.append(f"{name}[{obj}] as {persona}: {response.status_code}, expected {want}")
        if want == 302 and persona == "anonymous":
            assert response["Location"].startswith(reverse("login"))
    assert not failures, "\n".join(failures)


CASE_LINK = re.compile(r'href="/cases/([0-9a-f-]{36})/"')
REVIEW_LINK = re.compile(r'href="/review/([0-9a-f-]{36})/"')


@pytest.mark.parametrize(
    ("persona", "cases", "items"),
    [
        ("clinician", ["own"], None),
        ("physician", ["own"], ["own"]),
        ("other_unit_clinician", ["foreign"], None),
        ("other_unit_physician", ["foreign"], ["foreign"]),
    ],
)
def test_lists_show_exactly_the_units_objects(world, persona, cases, items):  # type: ignore[no-untyped-def]
    users, objects = world
    client = login(users[persona])
    shown = set(CASE_LINK.findall(client.get(reverse("case_list")).content.decode()))
    assert shown == {str(objects[o]["case"]) for o in cases}
    if items is not None:
        queued = set(REVIEW_LINK.findall(client.get(reverse("review_queue")).content.decode()))
        assert queued == {str(objects[o]["item"]) for o in items}


def test_global_permissions_and_superuser_do_not_leak_into_lists(world):  # type: ignore[no-untyped-def]
    users, objects = world
    admin = users["admin_user"]
    admin.user_permissions.add(
        Permission.objects.get(codename="view_case"), Permission.objects.get(codename="review_prediction")
    )
    admin.is_superuser = True
    admin.save()
    admin = User.objects.get(pk=admin.pk)
    assert admin.has_perm("diagnostics.view_case")  # globally, yes ...
    assert list(cases_for_user(user=admin)) == []  # ... but no case is listed
    assert list(review_queue(user=admin)) == []


def test_case_list_is_one_query(world, django_assert_num_queries):  # type: ignore[no-untyped-def]
    users, objects = world
    clinician = User.objects.get(pk=users["clinician"].pk)
    # The list itself, plus one indexed probe for single-case grants of this user
    # (selectors.cases.case_visible adds that branch only for users who hold one).
    with django_assert_num_queries(2):
        assert [c.uuid for c in cases_for_user(user=clinician)] == [objects["own"]["case"]]


def test_joining_a_unit_shows_its_cases_and_leaving_hides_them(world, care_unit):  # type: ignore[no-untyped-def]
    from accounts import services as account_services
    from accounts.models import AuditEvent

    users, objects = world
    other = users["other_unit_clinician"]
    account_services.unit_member_add(acting_user=users["admin_user"], unit=care_unit, user=other)
    assert objects["own"]["case"] in {c.uuid for c in cases_for_user(user=User.objects.get(pk=other.pk))}
    # Leaving the unit is a change of the user's groups in the user administration.
    access = account_services.UserAccess.of(other)
    account_services.user_access_set(
        acting_user=users["admin_user"],
        user=other,
        access=replace(access, groups=access.groups - {care_unit.group.name}),
    )
    assert objects["own"]["case"] not in {c.uuid for c in cases_for_user(user=User.objects.get(pk=other.pk))}
    changes = AuditEvent.objects.filter(action__startswith="permission.", object_id=str(other.uuid))
    assert [e.action for e in changes.order_by("id")][-2:] == [
        "permission.unit_member_add",
        "permission.groups_change",
    ]
