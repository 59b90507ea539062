"""Electronic signatures: password and second factor at signing, the signed record's
name, UTC time and meaning, and detection of any later change (raw SQL included)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from accounts.models import AuditEvent
from diagnostics.models import ModelVersion, ReviewDecision
from diagnostics.selectors.signatures import signature_check
from diagnostics.services.reviews import SignatureError, SigningLocked, review_sign
from diagnostics.signatures import content_sha256
from tests.factories import make_prediction
from tests.helpers import PASSWORD, login, otp_code, otp_device

pytestmark = pytest.mark.django_db


@pytest.fixture
def model(db) -> ModelVersion:  # type: ignore[no-untyped-def]
    return ModelVersion.objects.create(
        name="sig", version="1", task="t", labels=["Stage I", "Stage II", "Stage III"], bundle_path="x", sha256="0" * 64
    )


@pytest.fixture
def signed(clinician, physician, model) -> ReviewDecision:  # type: ignore[no-untyped-def]
    item = make_prediction(clinician, model, [0.1, 0.2, 0.7]).review_item
    return review_sign(
        signing_session=None,
        acting_user=physician,
        review_item=item,
        outcome="rejected",
        stage="Stage II",
        reason="nuclear grade lower",
        password=PASSWORD,
    )


def test_signing_without_the_password_fails_and_stores_nothing(clinician, physician, model):
    item = make_prediction(clinician, model, [0.1, 0.2, 0.7]).review_item
    for password in ("", "wrong-password"):
        with pytest.raises(SignatureError, match="password is not correct"):
            review_sign(
                signing_session=None,
                acting_user=physician,
                review_item=item,
                outcome="confirmed",
                stage="",
                reason="",
                password=password,
            )
    assert not ReviewDecision.objects.exists()
    assert not AuditEvent.objects.filter(action="review.sign").exists()


def test_enrolled_physician_needs_the_code_on_the_first_signing_of_the_session(clinician, physician, model):
    first = make_prediction(clinician, model, [0.1, 0.2, 0.7], ref="PSN-1").review_item
    second = make_prediction(clinician, model, [0.7, 0.2, 0.1], ref="PSN-2", color=(1, 2, 3)).review_item
    client = login(physician)
    url = reverse("review_detail", args=[first.uuid])
    assert "Authenticator code" in client.get(url).content.decode()
    # Password alone is not enough, nor a wrong code.
    for extra in ({}, {"otp_token": "000000"}):
        response = client.post(url, {"outcome": "confirmed", "password": PASSWORD, **extra})
        assert response.status_code == 400
    assert not ReviewDecision.objects.exists()
    # django-otp throttles the device for a second after a wrong code; a person types slower.
    otp_device(physician).throttle_reset()
    response = client.post(url, {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(physician)})
    assert response.status_code == 302
    # Later signings in the same continuous session: password only (21 CFR 11.200(a)(1)(i)).
    url2 = reverse("review_detail", args=[second.uuid])
    assert "Authenticator code" not in client.get(url2).content.decode()
    assert client.post(url2, {"outcome": "confirmed", "password": "wrong-password"}).status_code == 400
    assert client.post(url2, {"outcome": "confirmed", "password": PASSWORD}).status_code == 302
    assert ReviewDecision.objects.count() == 2


def test_service_refuses_a_wrong_code_for_an_enrolled_physician(clinician, physician, model):
    otp_device(physician)
    item = make_prediction(clinician, model, [0.1, 0.2, 0.7]).review_item
    with pytest.raises(SignatureError, match="authenticator code"):
        review_sign(
            signing_session=None,
            acting_user=physician,
            review_item=item,
            outcome="confirmed",
            stage="",
            reason="",
            password=PASSWORD,
            otp_token="123456",
        )
    assert not ReviewDecision.objects.exists()


def test_signed_record_shows_name_utc_time_meaning_and_verifies(signed, physician, clinician):
    assert signed.content_sha256 == content_sha256(signed)
    assert signature_check(signed).verifies
    event = AuditEvent.objects.get(action="review.sign", object_id=str(signed.uuid))
    assert event.data["content_sha256"] == signed.content_sha256
    assert event.data["meaning"] == "rejected"
    page = login(physician).get(reverse("review_detail", args=[signed.review_item.uuid])).content.decode()
    assert "signed by Peter Physician on " in page and " UTC, meaning: <em>rejected</em>" in page
    assert 'data-signature="verified"' in page
    case = signed.review_item.prediction.scan.case
    case_page = login(clinician).get(reverse("case_detail", args=[case.uuid])).content.decode()
    assert 'data-signature="verified"' in case_page


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("UPDATE diagnostics_reviewdecision SET stage = %s WHERE id = %s", ["Stage III"]),
        ("UPDATE diagnostics_reviewdecision SET reason = %s WHERE id = %s", ["edited"]),
        ("UPDATE diagnostics_reviewdecision SET outcome = %s, reason = '' WHERE id = %s", ["confirmed"]),
        ("UPDATE diagnostics_reviewdecision SET signer_name = %s WHERE id = %s", ["Someone Else"]),
        ("UPDATE diagnostics_reviewdecision SET signed_at = signed_at - interval '1 hour' WHERE id = %s", []),
        # Editing the content and re-computing the stored hash: the audit trail keeps the original.
        ("UPDATE diagnostics_reviewdecision SET content_sha256 = %s WHERE id = %s", ["f" * 64]),
    ],
)
def test_raw_sql_edit_of_a_signed_record_is_detected_and_shown(signed, physician, clinician, sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, signed.id])
    decision = ReviewDecision.objects.get(pk=signed.pk)
    check = signature_check(decision)
    assert not check.verifies
    review_page = login(physician).get(reverse("review_detail", args=[signed.review_item.uuid])).content.decode()
    assert 'data-signature="broken"' in review_page and "Signature does not verify" in review_page
    case = signed.review_item.prediction.scan.case
    case_page = login(clinician).get(reverse("case_detail", args=[case.uuid])).content.decode()
    assert 'data-signature="broken"' in case_page


def test_forger_who_recomputes_the_decision_hash_is_still_caught(signed):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE diagnostics_reviewdecision SET stage = 'Stage III' WHERE id = %s", [signed.id])
    decision = ReviewDecision.objects.get(pk=signed.pk)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE diagnostics_reviewdecision SET content_sha256 = %s WHERE id = %s",
            [content_sha256(decision), signed.id],
        )
    decision = ReviewDecision.objects.get(pk=signed.pk)
    check = signature_check(decision)
    assert not check.verifies and "recorded when it was signed" in check.problem


def test_wrong_signing_passwords_lock_the_session_on_every_door_and_are_audited(
    clinician, physician, admin_user, model, settings
):
    from tests.helpers import api

    settings.SIGNING_MAX_FAILURES = 3
    # This test counts attempts, not hashing strength: a fast hasher for its users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    for user in (physician, admin_user):
        user.set_password(PASSWORD)
        user.save(update_fields=["password"])
    item = make_prediction(clinician, model, [0.1, 0.2, 0.7]).review_item
    url = reverse("review_detail", args=[item.uuid])

    # The page: two refusals on the form, the third locks and logs the session out.
    page = login(physician)
    wrong = {"outcome": "confirmed", "password": "wrong-password", "otp_token": "123456"}
    for _ in range(2):
        assert page.post(url, wrong).status_code == 400
    locked = page.post(url, wrong)
    assert locked.status_code == 302 and locked["Location"].startswith(reverse("login"))
    assert "_auth_user_id" not in page.session
    again = page.post(url, {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(physician)})
    assert again.status_code == 302 and again["Location"].startswith(reverse("login"))
    assert not ReviewDecision.objects.exists()

    # The service itself: a session that used up its attempts cannot sign, even rightly.
    session = {"cw_sign_failures": 3}
    with pytest.raises(SigningLocked, match="log in again"):
        review_sign(
            signing_session=session,
            acting_user=physician,
            review_item=item,
            outcome="confirmed",
            stage="",
            reason="",
            password=PASSWORD,
        )

    # The API with a token: the token is the session; the third wrong password revokes it.
    machine = api(physician)
    sign_url = reverse("api_review_sign", args=[item.uuid])
    answers = [machine.post(sign_url, {"outcome": "confirmed", "password": "nope"}, format="json") for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 403]
    assert [a.json()["error"]["code"] for a in answers] == ["signature_failed", "signature_failed", "signing_locked"]
    assert machine.post(sign_url, {"outcome": "confirmed", "password": PASSWORD}, format="json").status_code == 401
    assert not ReviewDecision.objects.exists()

    # Every failed attempt is in the audit trail, with the lock; admins find them there.
    failed = AuditEvent.objects.filter(action="review.sign_failed", actor=physician)
    assert failed.count() == 6
    assert all(e.data["reason"] == "password" and e.object_id == str(item.uuid) for e in failed)
    assert AuditEvent.objects.filter(action="review.sign_locked", actor=physician).count() == 2
    listing = login(admin_user).get(reverse("audit_list"), {"action": "review.sign_failed"})
    assert listing.status_code == 200
    assert listing.content.decode().count("review.sign_failed") >= 6
    security = login(admin_user).get(reverse("lockouts")).content.decode()
    assert security.count("<td>wrong password</td>") == 6
    assert security.count("<td>signing locked, logged out</td>") == 2

    # A new login is a new session: signing works again.
    otp_device(physician).throttle_reset()
    fresh = login(physician).post(url, {"outcome": "confirmed", "password": PASSWORD, "otp_token": otp_code(physician)})
    assert fresh.status_code == 302 and not fresh["Location"].startswith(reverse("login"))
    assert ReviewDecision.objects.count() == 1
