"""Every shipped page, opened as the persona it is for, under the app's real
Content-Security-Policy (no ``bypass_csp``): the test fails when a page asks anything of
a host other than 127.0.0.1 (a CDN, Google Fonts), when the browser reports a CSP
violation, or when the console logs an error. One browser, one login per persona."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from diagnostics.models import ModelVersion, Scan
from tests.browser_tests.conftest import shot
from tests.browser_tests.journeys import AXE, login, screen
from tests.factories import PredictionFactory, ReviewDecisionFactory, make_case, store_heatmap
from tests.helpers import PASSWORD, image_bytes

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Recorded by the page itself: Playwright's init scripts run whatever the page's CSP says.
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +
    ' at ' + (e.sourceFile || document.location.pathname) + ':' + e.lineNumber);
});
"""


class Watch:
    """What one browser context did that a shipped page must not do."""

    def __init__(self, context: Any, base: str, *, axe: bool = False) -> None:
        # The live server answers on localhost; both loopback names are this machine.
        self.hosts = {urlsplit(base).hostname, "127.0.0.1", "localhost"}
        self.problems: list[str] = []
        self.expected_status: dict[str, int] = {}
        context.add_init_script(WATCH_CSP)
        if axe:  # as an init script too: the CSP forbids adding it to the page later
            context.add_init_script(path=str(AXE))
        context.on("request", self._request)
        context.on("console", self._console)
        context.on("weberror", lambda e: self.problems.append(f"page error: {e.error}"))

    def _request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if parts.hostname not in self.hosts:
            self.problems.append(f"request left 127.0.0.1: {request.url}")

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        text = message.text
        # The document of an error page we open on purpose answers its status.
        location = message.location.get("url", "")
        if text.startswith("Failed to load resource") and location in self.expected_status:
            return
        self.problems.append(f"console error on {location}: {text}")

    def open(self, page: Any, url: str, *, status: int = 200, wait: str | None = None) -> Any:
        """Open a page; ``wait`` names what its scripts build, for pages that build late."""
        if status != 200:
            self.expected_status[url] = status
        response = page.goto(url)  # returns after "load": every script of the page has run
        assert response is not None and response.status == status, f"{url}: {response and response.status}"
        if wait:
            page.wait_for_selector(wait, timeout=30_000)
            page.wait_for_load_state("networkidle")
        violations = page.evaluate("() => window.__cspViolations || []")
        self.problems.extend(f"CSP violation on {url}: {v}" for v in violations)
        return response


@pytest.fixture
def watched(browser, live_server) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    contexts: list[tuple[Any, Watch]] = []

    def new(username: str | None, *, axe: bool = False) -> tuple[Any, Watch]:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        watch = Watch(context, live_server.url, axe=axe)
        page = context.new_page()
        if username:
            login(page, live_server.url, username, PASSWORD)
        contexts.append((context, watch))
        return page, watch

    yield new
    for context, _ in contexts:
        context.close()


def test_every_page_stays_on_this_host_under_the_csp(  # type: ignore[no-untyped-def]
    live_server, watched, active_model: ModelVersion, clinician, physician, admin_user
):
    base = live_server.url
    case = make_case(clinician, ref="PSN-EVERY-1", n_files=3)
    scans = list(Scan.objects.filter(case=case).order_by("id"))
    predictions = [
        PredictionFactory(job=s.job, model_version=active_model, probabilities=p)
        for s, p in zip(scans, [[0.2, 0.8], [0.9, 0.1], [0.45, 0.55]], strict=True)
    ]
    store_heatmap(predictions[0], image_bytes(size=(96, 96), color=(255, 0, 0)))
    ReviewDecisionFactory(review_item=predictions[1].review_item, physician=physician)

    # Anonymous: the login page and the API's documentation.
    page, watch = watched(None)
    watch.open(page, f"{base}/accounts/login/")
    watch.open(page, f"{base}/api/v1/docs/", wait="#swagger-ui .info")
    assert "CancerWeb API" in page.locator("#swagger-ui .info").inner_text()
    page.wait_for_selector("#swagger-ui .opblock-tag", timeout=30_000)
    shot(page, "80-api-docs-swagger", full_page=False)
    watch.open(page, f"{base}/api/v1/redoc/", wait="#redoc-container h1")
    assert "CancerWeb API" in page.locator("#redoc-container h1").first.inner_text()
    assert page.locator("#redoc-container [role=menu] li").count() > 10  # the operations, in the sidebar
    shot(page, "81-api-docs-redoc", full_page=False)
    watch.open(page, f"{base}/no-such-page/", status=404)

    # Clinician.
    page, watch_c = watched("clinician", axe=True)  # its error pages are checked by axe-core
    watch_c.open(page, f"{base}/cases/")
    watch_c.open(page, f"{base}/cases/new/")
    watch_c.open(page, f"{base}/cases/{case.uuid}/")
    watch_c.open(page, f"{base}/cases/{case.uuid}/images/")
    watch_c.open(page, f"{base}/notifications/")
    watch_c.open(page, f"{base}/accounts/otp/setup/")
    watch_c.open(page, f"{base}/review/", status=403)
    assert page.locator("h1").inner_text() == "You may not open this page"
    screen(page, "82-error-403")
    page.click("text=Go to your start page")
    page.wait_for_url("**/cases/")
    watch_c.open(page, f"{base}/cases/00000000-0000-0000-0000-000000000000/", status=404)
    assert page.locator("h1").inner_text() == "Page not found"
    assert page.locator("nav[aria-label=Main] >> text=My cases").count() == 1
    screen(page, "83-error-404")

    # Physician.
    page, watch_p = watched("physician")
    watch_p.open(page, f"{base}/review/")
    watch_p.open(page, f"{base}/review/{predictions[0].review_item.uuid}/", wait="#viewer[data-heatmap-loaded='1']")
    watch_p.open(page, f"{base}/review/{predictions[1].review_item.uuid}/", wait="#viewer[data-ready='1']")
    watch_p.open(page, f"{base}/review/settings/")
    watch_p.open(page, f"{base}/dashboard/")
    watch_p.open(page, f"{base}/models/{active_model.uuid}/card/")
    watch_p.open(page, f"{base}/notifications/")

    # Admin: the administration, the model registry, the audit trail, the dashboard.
    page, watch_a = watched("admin")
    watch_a.open(page, f"{base}/admin/")
    watch_a.open(page, f"{base}/admin/diagnostics/modelversion/")
    watch_a.open(page, f"{base}/admin/diagnostics/modelversion/{active_model.pk}/change/")
    watch_a.open(page, f"{base}/admin/diagnostics/modelversion/register/")
    watch_a.open(page, f"{base}/admin/accounts/user/")
    watch_a.open(page, f"{base}/admin/accounts/user/{physician.pk}/change/")
    watch_a.open(page, f"{base}/admin/accounts/careunit/")
    watch_a.open(page, f"{base}/admin/accounts/auditevent/")
    watch_a.open(page, f"{base}/accounts/audit/")
    watch_a.open(page, f"{base}/dashboard/")

    problems = watch.problems + watch_c.problems + watch_p.problems + watch_a.problems
    assert not problems, "\n".join(problems)
