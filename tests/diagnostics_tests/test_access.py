"""Who may open what: wrong role 403, somebody else's case 404, anonymous to login."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.urls import reverse

from diagnostics.services.cases import IncomingFile, case_create
from tests.helpers import image_bytes, login

pytestmark = pytest.mark.django_db


@pytest.fixture
def case(clinician):  # type: ignore[no-untyped-def]
    return case_create(
        acting_user=clinician,
        patient_ref="PSN-42",
        body_site="lymph node",
        files=[IncomingFile(name="a.png", data=image_bytes())],
    )


def test_clinician_cannot_open_the_review_queue(clinician):
    assert login(clinician).get(reverse("review_queue")).status_code == 403


def test_clinician_and_admin_and_outsider_get_403_on_review_queue(admin_user, outsider):
    for user in (admin_user, outsider):
        assert login(user).get(reverse("review_queue")).status_code == 403


def test_physician_opens_the_review_queue(physician):
    assert login(physician).get(reverse("review_queue")).status_code == 200


@pytest.mark.parametrize("name", ["case_detail", "case_status"])
def test_another_clinician_gets_404_on_a_case_that_is_not_theirs(case, other_clinician, name):
    client = login(other_clinician)
    assert client.get(reverse(name, args=[case.uuid])).status_code == 404


def test_another_clinician_cannot_upload_to_or_view_images_of_foreign_case(case, other_clinician):
    client = login(other_clinician)
    response = client.post(reverse("case_upload", args=[case.uuid]), {"files": []})
    assert response.status_code == 404
    scan = case.scans.get()
    assert client.get(reverse("scan_image", args=[scan.uuid])).status_code == 404


def test_owner_sees_own_case_and_its_image(case, clinician):
    client = login(clinician)
    assert client.get(reverse("case_detail", args=[case.uuid])).status_code == 200
    image = client.get(reverse("scan_image", args=[case.scans.get().uuid]))
    assert image.status_code == 200
    assert image["Content-Type"] == "image/png"


def test_missing_case_is_404(clinician):
    assert login(clinician).get(reverse("case_detail", args=[uuid.uuid4()])).status_code == 404


def test_case_list_shows_exactly_the_users_own_cases(case, clinician, other_clinician):
    case_create(acting_user=other_clinician, patient_ref="PSN-OTHER", body_site="breast")
    body = login(clinician).get(reverse("case_list")).content.decode()
    assert "PSN-42" in body
    assert "PSN-OTHER" not in body


@pytest.mark.parametrize("role_user", ["admin_user", "outsider"])
def test_roles_without_clinical_access_get_403_on_case_pages(request, role_user):
    client = login(request.getfixturevalue(role_user))
    assert client.get(reverse("case_list")).status_code == 403
    assert client.get(reverse("case_new")).status_code == 403


@pytest.mark.parametrize("name", ["case_list", "case_new", "review_queue", "home"])
def test_anonymous_is_sent_to_login(name):
    response = Client().get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_home_sends_each_role_to_its_page(clinician, physician, admin_user):
    assert login(clinician).get(reverse("home"))["Location"] == reverse("case_list")
    assert login(physician).get(reverse("home"))["Location"] == reverse("review_queue")
    assert login(admin_user).get(reverse("home"))["Location"] == reverse("admin:index")


def test_roles_exist_with_their_permissions_from_the_migration():
    from django.contrib.auth.models import Group

    perms = {
        g.name: {f"{p.content_type.app_label}.{p.codename}" for p in g.permissions.all()} for g in Group.objects.all()
    }
    assert "diagnostics.review_prediction" in perms["physician"]
    assert "diagnostics.review_prediction" not in perms["clinician"]
    assert "diagnostics.add_scan" in perms["clinician"]
    assert not any(p.startswith("diagnostics.add_scan") for p in perms["admin"])


def test_login_and_logout_pages(clinician):
    client = Client()
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("login"), {"username": "clinician", "password": "wrong"})
    assert response.status_code == 200
    assert "did not match" in response.content.decode()
    client = login(clinician)
    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("case_list")).status_code == 302
