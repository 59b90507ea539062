"""Operations in a real browser: the admin opens the exchanges page, sees inbound and
outbound exchanges with their state and reason, and sends a failed result again."""

from __future__ import annotations

import pytest

from accounts.models import AuditEvent
from diagnostics.models import Exchange
from tests.browser_tests.journeys import login, screen
from tests.helpers import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_lists_exchanges_and_retries_a_failed_result(live_server, browser, admin_user):  # type: ignore[no-untyped-def]
    refused = Exchange.objects.create(
        direction="inbound", channel="stow-rs", state="refused",
        reason="dicom_unsupported_transfer_syntax: the DICOM transfer syntax (JPEG 2000) is not supported",
    )  # fmt: skip
    failed = Exchange.objects.create(
        direction="outbound", channel="sr-stow", state="failed", reason="the PACS answered HTTP 400", attempts=3
    )
    page = browser.new_context(bypass_csp=True).new_page()
    login(page, live_server.url, "admin", PASSWORD)
    page.goto(f"{live_server.url}/admin/diagnostics/exchange/")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    assert "JPEG 2000" in page.locator("#result_list").inner_text()
    assert "the PACS answered HTTP 400" in rows.nth(0).inner_text()
    page.locator("#result_list tbody tr").nth(0).locator("input.action-select").check()
    page.select_option("select[name=action]", "retry_selected")
    page.click("button[name=index]")
    assert "1 result(s) queued to be sent again." in page.locator(".messagelist").inner_text()
    screen(page, "40-admin-exchanges")
    failed.refresh_from_db()
    refused.refresh_from_db()
    assert failed.state == "pending" and refused.state == "refused"
    assert AuditEvent.objects.filter(action="integration.exchange_retry", actor=admin_user).count() == 1
