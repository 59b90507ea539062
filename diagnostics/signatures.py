"""Electronic signatures on review decisions (21 CFR Part 11 style): the signed
content is hashed at signing; the hash is kept on the decision and in the audit
event of the signing, so a later change of the decision, of its hash, or of both,
no longer verifies."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diagnostics.models import ReviewDecision

SIGN_ACTIONS = ("review.sign", "review.correct")


def signed_content(decision: ReviewDecision) -> dict[str, object]:
    """What the physician signs: the item and prediction, the decision, who and when."""
    item = decision.review_item
    return {
        "review_item": str(item.uuid),
        "prediction": str(item.prediction.uuid),
        "outcome": decision.outcome,
        "stage": decision.stage,
        "reason": decision.reason,
        "signer": str(decision.physician.uuid),
        "signer_name": decision.signer_name,
        "signed_at": decision.signed_at.isoformat(),
        "supersedes": str(decision.supersedes.uuid) if decision.supersedes is not None else None,
    }


def content_sha256(decision: ReviewDecision) -> str:
    encoded = json.dumps(signed_content(decision), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


@dataclass(frozen=True)
class SignatureCheck:
    verifies: bool
    problem: str = ""
