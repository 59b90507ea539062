"""Shared steps of the role journeys: log in, screenshot and axe-core check of a screen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser_tests.conftest import shot

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}));
        }"""
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


def screen(page: Any, name: str) -> Path:
    """Screenshot the screen and fail on any serious or critical accessibility problem."""
    path = shot(page, name)
    bad = axe_violations(page)
    assert not bad, f"axe-core on {name}: {bad}"
    return path


def login(page: Any, base: str, username: str, password: str) -> None:
    """Log in through the page; physicians and admins then type their authenticator's
    code on the second-factor page, as they would."""
    from accounts.models import User
    from accounts.otp import requires_otp
    from tests.helpers import otp_code, otp_device

    user = User.objects.get(username=username)
    if requires_otp(user):
        otp_device(user)
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button:has-text('Log in')")
    page.wait_for_load_state()
    if "/accounts/otp/verify/" in page.url:
        page.fill("#id_token", otp_code(user))
        page.click("button:has-text('Verify')")
        page.wait_for_load_state()
