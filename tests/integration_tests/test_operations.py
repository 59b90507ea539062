"""Operations rules below the admin page: who may retry, what can be retried, who sees
the exchanges page (the browser test drives the page itself)."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from diagnostics.models import Exchange
from diagnostics.services.integration import IntegrationError, exchange_retry
from tests.helpers import login


@pytest.fixture
def exchanges(db):  # type: ignore[no-untyped-def]
    inbound = Exchange.objects.create(direction="inbound", channel="c-store", state="refused", reason="x")
    sent = Exchange.objects.create(direction="outbound", channel="sr-stow", state="sent")
    failed = Exchange.objects.create(direction="outbound", channel="sr-stow", state="failed", reason="HTTP 400")
    return inbound, sent, failed


def test_only_admins_retry_and_only_unsent_outbound_results(exchanges, admin_user, physician):
    inbound, sent, failed = exchanges
    with pytest.raises(PermissionDenied):
        exchange_retry(acting_user=physician, exchange=failed)
    for exchange in (inbound, sent):
        with pytest.raises(IntegrationError):
            exchange_retry(acting_user=admin_user, exchange=exchange)
    assert exchange_retry(acting_user=admin_user, exchange=failed).state == "pending"
    inbound.refresh_from_db()
    sent.refresh_from_db()
    assert (inbound.state, sent.state) == ("refused", "sent")


def test_the_exchanges_page_is_for_admins_only(exchanges, admin_user, physician, clinician):
    assert login(admin_user).get("/admin/diagnostics/exchange/").status_code == 200
    for user in (physician, clinician):
        response = login(user).get("/admin/diagnostics/exchange/")
        assert response.status_code in (302, 403)
    page = login(admin_user).get(f"/admin/diagnostics/exchange/{exchanges[2].pk}/change/")
    assert page.status_code == 200 and b"HTTP 400" in page.content
