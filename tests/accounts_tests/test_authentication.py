"""Login through the real page: lockout (django-axes), second factor (django-otp),
session key rotation, idle and absolute timeouts, security headers."""

from __future__ import annotations

import base64
import re
import time

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django_otp.oath import totp

from accounts.middleware import SESSION_LAST_SEEN, SESSION_LOGIN_AT
from accounts.models import AuditEvent
from tests.factories import UserFactory
from tests.helpers import PASSWORD, login, otp_code, otp_device

pytestmark = pytest.mark.django_db


def _post_login(client: Client, username: str, password: str, **extra: str):  # type: ignore[no-untyped-def]
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def _fast_passwords(settings, *users) -> None:  # type: ignore[no-untyped-def]
    """These tests count attempts, not hashing strength: a fast hasher for their users."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for user in users:
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])


def test_lockout_on_the_sixth_attempt_per_user_at_that_address(clinician, physician, admin_user, settings):
    _fast_passwords(settings, clinician, physician, admin_user)
    client = Client()
    for _ in range(4):
        response = _post_login(client, "clinician", "wrong-password")
        assert response.status_code == 200 and "did not match" in response.content.decode()
    # The 5th failure locks the name at this address at once and says so.
    assert _post_login(client, "clinician", "wrong-password").status_code == 429
    # The 6th attempt from there is refused even with the right password.
    locked = _post_login(Client(), "clinician", PASSWORD)
    assert locked.status_code == 429
    assert "locked at this address for 15 minutes" in locked.content.decode()
    assert "_auth_user_id" not in Client().session
    assert AuditEvent.objects.filter(action="auth.login_failed", object_id=str(clinician.uuid)).count() == 6
    assert AuditEvent.objects.filter(action="auth.login_failed", data__locked_out=True).exists()
    # The physician and the admin at the same workstation are not locked out.
    assert _post_login(Client(), "physician", PASSWORD).status_code == 302
    assert _post_login(Client(), "admin", PASSWORD).status_code == 302


def test_an_address_is_locked_as_a_whole_only_at_the_higher_limit(clinician, settings):
    _fast_passwords(settings, clinician)
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 8
    client = Client(REMOTE_ADDR="10.1.2.3")
    for i in range(7):
        assert _post_login(client, f"nobody{i}", "wrong-password").status_code == 200
    # Seven names tried once each lock nobody; the 8th failure locks the address.
    assert _post_login(client, "nobody7", "wrong-password").status_code == 429
    assert _post_login(client, "clinician", PASSWORD).status_code == 429
    # ... while the same user from another address logs in.
    assert _post_login(Client(REMOTE_ADDR="10.1.2.4"), "clinician", PASSWORD).status_code == 302


def test_admin_sees_and_lifts_a_lockout_on_the_lockouts_page_audited(clinician, physician, admin_user, settings):
    _fast_passwords(settings, clinician, physician, admin_user)
    for _ in range(5):
        _post_login(Client(REMOTE_ADDR="10.7.7.7"), "clinician", "wrong-password")
    assert _post_login(Client(REMOTE_ADDR="10.7.7.7"), "clinician", PASSWORD).status_code == 429
    url = reverse("lockouts")
    # Staff only: a physician gets no page, nor can unlock.
    doctor = login(physician)
    assert doctor.get(url).status_code == 403
    assert doctor.post(url, {"username": "clinician", "ip_address": "10.7.7.7"}).status_code == 403
    admin = login(admin_user)
    page = admin.get(url)
    assert page.status_code == 200
    assert 'data-lockout="clinician@10.7.7.7"' in page.content.decode()
    done = admin.post(url, {"username": "clinician", "ip_address": "10.7.7.7"}, follow=True)
    assert "Unlocked clinician at 10.7.7.7" in done.content.decode()
    assert 'data-lockout="clinician@10.7.7.7"' not in done.content.decode()
    assert _post_login(Client(REMOTE_ADDR="10.7.7.7"), "clinician", PASSWORD).status_code == 302
    unlock = AuditEvent.objects.get(action="auth.unlock")
    assert unlock.actor == admin_user
    assert unlock.data["username"] == "clinician" and unlock.data["ip_address"] == "10.7.7.7"
    assert unlock.data["records_removed"] >= 1


def test_five_failures_then_success_is_not_locked(clinician):
    client = Client()
    for _ in range(4):
        _post_login(client, "clinician", "wrong-password")
    assert _post_login(client, "clinician", PASSWORD).status_code == 302


def test_session_key_is_rotated_at_login(clinician):
    client = Client()
    session = client.session  # an anonymous session, as a fixation attacker would plant
    session["planted"] = 1
    session.save()
    before = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert _post_login(client, "clinician", PASSWORD).status_code == 302
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert after != before
    assert client.get(reverse("case_list")).status_code == 200


def test_physician_without_a_device_must_enrol_then_uses_the_code(physician):
    client = Client()
    assert _post_login(client, "physician", PASSWORD).status_code == 302
    response = client.get(reverse("review_queue"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("otp_setup"))
    page = client.get(reverse("otp_setup")).content.decode()
    secret = re.search(r'class="otp-secret">([A-Z2-7=]+)<', page).group(1)  # type: ignore[union-attr]
    assert "otpauth://totp/" in page
    assert client.post(reverse("otp_setup"), {"token": "not-a-code"}).status_code == 400
    code = str(totp(base64.b32decode(secret))).zfill(6)
    assert client.post(reverse("otp_setup"), {"token": code, "next": "/review/"}).status_code == 302
    assert client.get(reverse("review_queue")).status_code == 200
    assert AuditEvent.objects.filter(action="otp.enrol", actor=physician).exists()

    # Next login: the code is asked before anything else.
    again = Client()
    _post_login(again, "physician", PASSWORD)
    response = again.get(reverse("review_queue"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("otp_verify"))
    assert again.post(reverse("otp_verify"), {"token": "12345"}).status_code == 400
    assert again.post(reverse("otp_verify"), {"token": otp_code(physician)}).status_code == 302
    assert again.get(reverse("review_queue")).status_code == 200


def test_admin_needs_the_second_factor_and_clinician_does_not(admin_user, clinician):
    otp_device(admin_user)
    admin = Client()
    _post_login(admin, "admin", PASSWORD)
    assert admin.get(reverse("audit_list"))["Location"].startswith(reverse("otp_verify"))
    clin = Client()
    _post_login(clin, "clinician", PASSWORD)
    assert clin.get(reverse("case_list")).status_code == 200


def test_demo_users_are_exempt_only_in_demo_mode(settings, physician):
    settings.OTP_DEMO_EXEMPT = True
    client = Client()
    _post_login(client, "physician", PASSWORD)
    assert client.get(reverse("review_queue")).status_code == 200
    settings.OTP_DEMO_EXEMPT = False
    assert client.get(reverse("review_queue")).status_code == 302


def _age_session(client: Client, *, login_ago: float, seen_ago: float) -> None:
    session = client.session
    now = time.time()
    session[SESSION_LOGIN_AT] = now - login_ago
    session[SESSION_LAST_SEEN] = now - seen_ago
    session.save()


def test_idle_timeout_is_30_minutes(clinician):
    client = login(clinician)
    _age_session(client, login_ago=3600, seen_ago=29 * 60)
    assert client.get(reverse("case_list")).status_code == 200
    _age_session(client, login_ago=3600, seen_ago=31 * 60)
    response = client.get(reverse("case_list"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.get(reverse("case_list")).status_code == 302  # logged out for good


def test_absolute_timeout_is_12_hours_even_when_active(clinician):
    client = login(clinician)
    _age_session(client, login_ago=12 * 3600 - 60, seen_ago=10)
    assert client.get(reverse("case_list")).status_code == 200
    _age_session(client, login_ago=12 * 3600 + 60, seen_ago=10)
    assert client.get(reverse("case_list"))["Location"].startswith(reverse("login"))


def test_security_headers_on_a_response(clinician):
    response = login(clinician).get(reverse("case_list"))
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_hsts_is_sent_over_https_in_production_settings(settings, clinician):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    response = Client().get(reverse("login"), secure=True)
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_password_validators_refuse_a_weak_password():
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    user = UserFactory(username="someone")
    with pytest.raises(ValidationError):
        validate_password("password1", user)
    with pytest.raises(ValidationError):
        validate_password("short9!", user)
    validate_password("a long and unusual passphrase 42", user)


def test_wrong_second_factor_codes_end_the_login_session(physician, settings):
    _fast_passwords(settings, physician)
    settings.OTP_MAX_FAILURES = 3
    otp_device(physician)
    client = Client()
    assert _post_login(client, "physician", PASSWORD).status_code == 302
    for _ in range(2):
        assert client.post(reverse("otp_verify"), {"token": "000000"}).status_code == 400
    ended = client.post(reverse("otp_verify"), {"token": "000000"}, follow=True)
    assert ended.redirect_chain[0][0] == reverse("login")
    assert "Too many wrong codes" in ended.content.decode()
    assert "_auth_user_id" not in client.session
    failed = AuditEvent.objects.filter(action="auth.otp_failed", actor=physician)
    assert [e.data["attempt"] for e in failed.order_by("id")] == [1, 2, 3]
    assert AuditEvent.objects.filter(action="auth.otp_locked", actor=physician).count() == 1
