"""The physician's review: blinded-first reads, review settings, and the signed decision
(confirm, reject, correct) with its electronic signature."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit_record, record_view
from accounts.models import ApiToken, AuditEvent, User
from accounts.otp import confirmed_device
from accounts.roles import REVIEW_PERMISSION
from accounts.services import api_token_revoke
from core.exceptions import ApplicationError
from diagnostics import signatures
from diagnostics.models import (
    BlindedRead,
    ReviewDecision,
    ReviewerPreference,
    ReviewItem,
)
from diagnostics.selectors.reviews import review_item_ai_hidden, review_item_get
from diagnostics.services.integration import result_queue
from diagnostics.services.notifications import notify_case_signed
from diagnostics.services.worklists import worklists_changed


class SignatureError(ApplicationError):
    """The decision was not signed: a wrong password or authenticator code."""


class SigningLocked(SignatureError):
    """Too many wrong signing attempts in this session: signing is locked until the
    user logs in again (pages log the session out; a token is revoked)."""


class ReviewRuleError(ApplicationError):
    """A review rule refused the action (e.g. blinded-first: the physician's own stage
    must be recorded before the AI's answer is shown and a decision signed)."""


# Set in the signing session after its first signature with the authenticator code.
SESSION_OTP_SIGNED = "cw_otp_signed"
# Wrong signing attempts (password or code) in this session.
SESSION_SIGN_FAILURES = "cw_sign_failures"


def _signing_failures(
    *, user: User, signing_session: MutableMapping[str, Any] | None, api_token: ApiToken | None
) -> int:
    """Wrong signing attempts so far in this session. A browser session counts its own;
    a token, which is a session of its own, counts the audit trail's attempts with it."""
    if signing_session is not None:
        return int(signing_session.get(SESSION_SIGN_FAILURES, 0))
    if api_token is not None:
        return AuditEvent.objects.filter(
            actor=user, action="review.sign_failed", data__api_token=str(api_token.uuid)
        ).count()
    return 0


def _locked_message() -> str:
    return (
        f"signing is locked after {settings.SIGNING_MAX_FAILURES} wrong attempts in this session; log in again to sign"
    )


def _signing_failed(
    *,
    user: User,
    review_item: ReviewItem,
    what: str,
    signing_session: MutableMapping[str, Any] | None,
    api_token: ApiToken | None,
    client_address: str | None,
) -> SignatureError:
    """Records a wrong signing attempt (21 CFR 11.300(d): attempts at unauthorised use
    are detected and reported) and answers the error to raise: the plain refusal, or
    the lock once this session has used up its attempts."""
    failures = _signing_failures(user=user, signing_session=signing_session, api_token=api_token) + 1
    limit = settings.SIGNING_MAX_FAILURES
    with transaction.atomic():
        audit_record(
            actor=user,
            action="review.sign_failed",
            obj=review_item,
            data={
                "reason": what,
                "attempt": failures,
                "limit": limit,
                "api_token": str(api_token.uuid) if api_token is not None else None,
            },
            client_address=client_address,
        )
        if failures >= limit:
            audit_record(
                actor=user,
                action="review.sign_locked",
                obj=user,
                data={"attempts": failures, "api_token": str(api_token.uuid) if api_token is not None else None},
                client_address=client_address,
            )
            if api_token is not None:
                api_token_revoke(acting_user=user, token=api_token, client_address=client_address)
    if signing_session is not None:
        signing_session[SESSION_SIGN_FAILURES] = failures
    if failures >= limit:
        return SigningLocked("signing_locked", _locked_message())
    if what == "password":
        return SignatureError("signature_failed", "the password is not correct; the decision was not signed")
    return SignatureError("second_factor_failed", "the authenticator code is not correct; the decision was not signed")


def second_factor_required(*, user: User, signing_session: MutableMapping[str, Any] | None) -> bool:
    """Whether this signature needs the authenticator code as well as the password.

    21 CFR 11.200(a)(1)(i): within one continuous session (ours ends after 30 idle
    minutes) the first signing uses both components and later ones at least one (the
    password is asked every time). A request without a continuous session (an API
    token) is a session of its own, so it always needs both."""
    if confirmed_device(user) is None:
        return False
    return signing_session is None or not signing_session.get(SESSION_OTP_SIGNED)


def review_sign(
    *,
    acting_user: User,
    review_item: ReviewItem,
    outcome: str,
    stage: str,
    reason: str,
    password: str,
    signing_session: MutableMapping[str, Any] | None,
    supersedes: ReviewDecision | None = None,
    client_address: str | None = None,
    otp_token: str = "",
    api_token: ApiToken | None = None,
) -> ReviewDecision:
    """A physician confirms or rejects a prediction, or corrects a signed decision,
    and signs it by re-entering the password and, where an authenticator is
    enrolled, a code from it (see `second_factor_required`). Signed decisions are
    never edited. ``signing_session`` is the browser session the physician signs in
    (it remembers that the session's first signature carried the code), or None for
    a request that has no continuous session (``api_token``: the token it came with).

    After ``SIGNING_MAX_FAILURES`` wrong passwords or codes in one session, every
    signing attempt of that session is refused (``signing_locked``) until the user
    logs in again; a token is revoked. Each wrong attempt is an audit event."""
    if not acting_user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("only physicians can sign review decisions")
    if review_item_ai_hidden(user=acting_user, item=review_item):
        raise ReviewRuleError(
            "blinded_read_required",
            "record your own stage first; the AI's answer is shown and signing opens after that",
        )
    if outcome == ReviewDecision.Outcome.CONFIRMED and review_item.prediction.out_of_distribution:
        raise ReviewRuleError(
            "no_suggestion_to_confirm",
            "this image is outside what the model was trained on, so there is no suggested stage to confirm; "
            "reject it and record your own stage and reason",
        )
    if _signing_failures(user=acting_user, signing_session=signing_session, api_token=api_token) >= (
        settings.SIGNING_MAX_FAILURES
    ):
        raise SigningLocked("signing_locked", _locked_message())
    wrong = ""
    if not password or not acting_user.check_password(password):
        wrong = "password"
    needs_code = second_factor_required(user=acting_user, signing_session=signing_session)
    device = confirmed_device(acting_user)
    if not wrong and needs_code and (device is None or not device.verify_token((otp_token or "").strip())):
        wrong = "second_factor"
    if wrong:
        raise _signing_failed(
            user=acting_user,
            review_item=review_item,
            what=wrong,
            signing_session=signing_session,
            api_token=api_token,
            client_address=client_address,
        )
    labels = list(review_item.prediction.labels)
    reason = reason.strip()
    if outcome == ReviewDecision.Outcome.CONFIRMED:
        if supersedes is not None:
            raise ValidationError({"outcome": "a correction must state a stage and a reason"})
        stage = review_item.prediction.predicted_label
    elif outcome == ReviewDecision.Outcome.REJECTED:
        if stage not in labels:
            raise ValidationError({"stage": f"choose one of the model's stages: {', '.join(labels)}"})
        if not reason:
            raise ValidationError({"reason": "a rejection or correction needs a reason"})
    else:
        raise ValidationError({"outcome": "choose confirm or reject"})

    with transaction.atomic():
        item = ReviewItem.objects.select_for_update().get(pk=review_item.pk)
        current = item.decisions.filter(superseded_by__isnull=True).first()
        if supersedes is None and current is not None:
            raise ValidationError({"outcome": "this item is already signed; record a correction instead"})
        if supersedes is not None and (current is None or supersedes.pk != current.pk):
            raise ValidationError({"supersedes": "only the current signed decision can be corrected"})
        decision = ReviewDecision(
            review_item=item,
            outcome=outcome,
            stage=stage,
            reason=reason,
            physician=acting_user,
            signer_name=acting_user.display_name,
            signed_at=timezone.now(),
            supersedes=supersedes,
        )
        decision.content_sha256 = signatures.content_sha256(decision)
        decision.full_clean()
        decision.save()
        if item.status != ReviewItem.Status.SIGNED:
            item.status = ReviewItem.Status.SIGNED
            item.save(update_fields=["status"])
        audit_record(
            actor=acting_user,
            action="review.correct" if supersedes else "review.sign",
            obj=decision,
            data={
                "review_item": str(item.uuid),
                "outcome": outcome,
                "stage": stage,
                "predicted": item.prediction.predicted_label,
                "supersedes": str(supersedes.uuid) if supersedes else None,
                "meaning": decision.meaning,
                "signer_name": decision.signer_name,
                "signed_at": decision.signed_at.isoformat(),
                "content_sha256": decision.content_sha256,
            },
            client_address=client_address,
        )
        notify_case_signed(decision=decision)
        # A case from a PACS gets its signed result back there (sent after commit,
        # retried until the PACS takes it); signing never waits for the PACS.
        result_queue(decision=decision)
        worklists_changed(unit_ids=[review_item.prediction.scan.case.unit_id])
    if needs_code and signing_session is not None:
        signing_session[SESSION_OTP_SIGNED] = True
    return decision


def reviewer_preference_set(
    *, acting_user: User, blinded_first: bool, client_address: str | None = None
) -> ReviewerPreference:
    if not acting_user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("review settings are for physicians")
    with transaction.atomic():
        pref, _ = ReviewerPreference.objects.select_for_update().get_or_create(user=acting_user)
        old = pref.blinded_first
        pref.blinded_first = blinded_first
        pref.full_clean()
        pref.save()
        audit_record(
            actor=acting_user,
            action="reviewer_preference.set",
            obj=acting_user,
            data={"blinded_first": {"old": old, "new": blinded_first}},
            client_address=client_address,
        )
    return pref


def blinded_read_record(
    *, acting_user: User, review_item: ReviewItem, stage: str, client_address: str | None = None
) -> BlindedRead:
    """Keep the stage a physician chose before the AI's answer was shown. Recorded once:
    after the reveal a second blind read would not be blind."""
    if not acting_user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("only physicians record reads")
    if review_item.status != ReviewItem.Status.PENDING:
        raise ReviewRuleError("item_signed", "this item is signed already; a blinded read is taken before signing")
    labels = list(review_item.prediction.labels)
    if stage not in labels:
        raise ValidationError({"stage": f"choose one of the model's stages: {', '.join(labels)}"})
    with transaction.atomic():
        item = ReviewItem.objects.select_for_update().get(pk=review_item.pk)
        if item.blinded_reads.filter(physician=acting_user).exists():
            raise ValidationError({"stage": "your blinded stage for this item is already recorded"})
        read = BlindedRead(review_item=item, physician=acting_user, stage=stage)
        read.full_clean()
        read.save()
        audit_record(
            actor=acting_user,
            action="review.blinded_read",
            obj=read,
            data={"review_item": str(item.uuid), "stage": stage},
            client_address=client_address,
        )
    return read


def review_item_open(*, acting_user: User, item_uuid: UUID, client_address: str | None = None) -> ReviewItem:
    """A review item opened for reading (the review screen, or its API record): audited."""
    item = review_item_get(user=acting_user, item_uuid=item_uuid)
    record_view(actor=acting_user, obj=item, client_address=client_address)
    return item
