"""Whether a signed decision still matches what its physician signed."""

from __future__ import annotations

from accounts.models import AuditEvent
from diagnostics.models import ReviewDecision
from diagnostics.signatures import SIGN_ACTIONS, SignatureCheck, content_sha256


def signature_check(decision: ReviewDecision) -> SignatureCheck:
    """Does the decision still match what was signed? Recomputes the content hash and
    compares it with the hash stored on the decision and in the signing's audit event."""
    stored = decision.content_sha256
    if not stored:
        return SignatureCheck(False, "the decision carries no signature hash")
    if content_sha256(decision) != stored:
        return SignatureCheck(False, "the decision was changed after it was signed")
    audited = (
        AuditEvent.objects.filter(
            action__in=SIGN_ACTIONS, object_type="diagnostics.reviewdecision", object_id=str(decision.uuid)
        )
        .values_list("data__content_sha256", flat=True)
        .first()
    )
    if audited != stored:
        return SignatureCheck(False, "the signature hash differs from the one recorded when it was signed")
    return SignatureCheck(True)
