"""The error pages a person can meet (400, 403, 404, 500, 503, a stale form) are the
site's styled pages with a way on, not bare technical text; under /api/ they keep the
API's JSON shape."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import OperationalError
from django.test import Client, RequestFactory
from django.urls import reverse

from core.api.errors import handler400, handler500
from core.middleware import DatabaseUnavailableMiddleware
from tests.helpers import login

pytestmark = pytest.mark.django_db


def _styled_with_way_on(html: str) -> None:
    assert "/static/css/app.css" in html
    assert "Go to your start page" in html


def test_403_and_404_pages_are_styled_and_lead_on(clinician):
    client = login(clinician)
    forbidden = client.get(reverse("review_queue"))  # a clinician is not a reviewer
    assert forbidden.status_code == 403
    html = forbidden.content.decode()
    _styled_with_way_on(html)
    assert "You may not open this page" in html and reverse("case_list") in html
    missing = client.get(reverse("case_detail", args=[uuid.uuid4()]))
    assert missing.status_code == 404
    _styled_with_way_on(missing.content.decode())
    assert "Page not found" in missing.content.decode()
    # Under /api/ the same refusals keep the API's shape.
    api = client.get(f"/api/v1/cases/{uuid.uuid4()}/")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"


def test_500_and_503_render_without_the_database_and_400_leads_on_too():
    request = RequestFactory().get("/cases/")
    request.user = AnonymousUser()
    for response, title in (
        (handler500(request), "Something went wrong on the server"),
        (handler400(request), "The request could not be understood"),
    ):
        html = response.content.decode()
        _styled_with_way_on(html)
        assert title in html
    middleware = DatabaseUnavailableMiddleware(lambda r: None)  # type: ignore[arg-type,return-value]
    unavailable = middleware.process_exception(request, OperationalError("down"))
    assert unavailable is not None and unavailable.status_code == 503
    html = unavailable.content.decode()
    _styled_with_way_on(html)
    assert "The database cannot be reached right now" in html


def test_a_stale_form_gets_the_styled_page(clinician):
    client = Client(enforce_csrf_checks=True)
    client.force_login(clinician)
    response = client.post(reverse("notification_read"), {})
    assert response.status_code == 403
    html = response.content.decode()
    _styled_with_way_on(html)
    assert "The form has expired" in html and "nothing was saved" in html
