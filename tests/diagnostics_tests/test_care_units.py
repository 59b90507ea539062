"""A case belongs to the unit it was created in; the creator picks one of theirs."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts import services as account_services
from diagnostics.models import Case
from tests.helpers import image_bytes, login

pytestmark = pytest.mark.django_db


def _form(**extra: object) -> dict[str, object]:
    return {
        "patient_ref": "PSN-U1",
        "body_site": "breast",
        "note": "",
        "files": [SimpleUploadedFile("a.png", image_bytes())],
        **extra,
    }


def test_one_unit_is_chosen_automatically(clinician, care_unit):
    client = login(clinician)
    assert 'name="unit"' not in client.get(reverse("case_new")).content.decode()
    assert client.post(reverse("case_new"), _form()).status_code == 302
    assert Case.objects.get(patient_ref="PSN-U1").unit == care_unit


def test_member_of_two_units_picks_one_and_cannot_pick_a_foreign_one(clinician, care_unit, other_unit):
    second = account_services.unit_create(acting_user=None, name="Unit C")
    account_services.unit_member_add(acting_user=None, unit=second, user=clinician)
    client = login(clinician)
    page = client.get(reverse("case_new")).content.decode()
    assert 'name="unit"' in page and "Unit A" in page and "Unit C" in page and "Unit B" not in page
    missing = client.post(reverse("case_new"), _form())
    assert missing.status_code == 400 and "This field is required" in missing.content.decode()
    foreign = client.post(reverse("case_new"), _form(unit=str(other_unit.uuid)))
    assert foreign.status_code == 400 and "Select a valid choice" in foreign.content.decode()
    assert not Case.objects.exists()
    assert client.post(reverse("case_new"), _form(unit=str(second.uuid))).status_code == 302
    assert Case.objects.get().unit == second


def test_clinician_without_a_unit_is_told_why(db):
    from tests.factories import UserFactory

    loner = UserFactory(username="loner", role="clinician")
    response = login(loner).post(reverse("case_new"), _form())
    assert response.status_code == 400 and "no care unit" in response.content.decode()
    assert not Case.objects.exists()


def test_unit_colleague_sees_and_adds_to_the_case(clinician, care_unit):
    from tests.factories import UserFactory

    colleague = UserFactory(username="colleague", role="clinician")
    account_services.unit_member_add(acting_user=None, unit=care_unit, user=colleague)
    client = login(clinician)
    client.post(reverse("case_new"), _form())
    case = Case.objects.get()
    other = login(colleague)
    assert other.get(reverse("case_detail", args=[case.uuid])).status_code == 200
    upload = other.post(
        reverse("case_upload", args=[case.uuid]), {"files": [SimpleUploadedFile("b.png", image_bytes(color=(1, 2, 3)))]}
    )
    assert upload.status_code == 302
    assert case.scans.count() == 2
